// SPDX-License-Identifier: Apache-2.0
// The `pocketflow` command line: train | compress | eval | info | learners | export | bench |
// tune | sweep | report | check.
// The only top-level try/catch of the project lives here: exceptions become one-line messages and
// exit codes (0 ok, 2 bad input, 1 other failure, 130 interrupted after saving a checkpoint).
#include <algorithm>
#include <cerrno>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "pocketflow/cpu.h"
#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/onnx.h"
#include "pocketflow/regression.h"
#include "pocketflow/report.h"
#include "pocketflow/sweep.h"
#include "pocketflow/tune.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "cli.h"

namespace pf = pocketflow;
using nlohmann::json;
using pf::cli::cmd_bench;
using pf::cli::cmd_export;
using pf::cli::cmd_info;
using pf::cli::GlobalOptions;
using pf::cli::JobOptions;
using pf::cli::load;

pf::Job pf::cli::load(const JobOptions& o, const GlobalOptions& g, std::vector<std::string> extra) {
    std::vector<std::string> overrides = o.overrides;
    if (g.threads >= 0) {
        overrides.push_back(fmt::format("threads={}", g.threads));
    }
    overrides.insert(overrides.end(), extra.begin(), extra.end());
    return o.config.empty() ? pf::default_job(overrides) : pf::load_job(o.config, overrides);
}

namespace {

void add_job_options(CLI::App* cmd, JobOptions& o, bool config_required) {
    auto* c = cmd->add_option("-c,--config", o.config, "job file (YAML)");
    if (config_required) {
        c->required();
    }
    cmd->add_option("--set", o.overrides, "override a job key: --set train.epochs=3 (repeatable)")
        ->take_all()
        ->allow_extra_args(false);
}

void add_nproc_option(CLI::App* cmd, JobOptions& o) {
    cmd->add_option("--nproc", o.nproc,
                    "data-parallel workers on this machine (c10d Gloo; the cores are divided)")
        ->check(CLI::Range(1, 256));
}

void print_summary(const json& s) {
    fmt::print("\n{:<14}{}\n", "run dir", s["run_dir"].get<std::string>());
    fmt::print("{:<14}{} ({})\n", "model", s["model"].get<std::string>(),
               pf::human_bytes(s["file_bytes"].get<double>()));
    fmt::print("{:<14}{} params, {} MACs\n", "size", pf::human_count(s["params"].get<double>()),
               pf::human_count(s["macs"].get<double>()));
    fmt::print("{:<14}top-1 {:.2f}%  top-5 {:.2f}%  loss {:.4f}  ({} images)\n", "test",
               s["top1"].get<double>(), s["top5"].get<double>(), s["loss"].get<double>(),
               s["samples"].get<int64_t>());
    fmt::print("\n{:<6}{:<24}{:>10}{:>12}{:>12}{:>12}{:>10}\n", "stage", "learner", "seconds",
               "params", "MACs", "val top-1", "img/s");
    int i = 0;
    for (const auto& st : s["stages"]) {
        fmt::print(
            "{:<6}{:<24}{:>10.1f}{:>12}{:>12}{:>12}{:>10}\n", i++, st["learner"].get<std::string>(),
            st["seconds"].get<double>(), pf::human_count(st["params"].get<double>()),
            pf::human_count(st["macs"].get<double>()),
            st.contains("val_top1") ? fmt::format("{:.2f}%", st["val_top1"].get<double>()) : "-",
            st.contains("images_per_second")
                ? fmt::format("{:.0f}", st["images_per_second"].get<double>())
                : "-");
    }
    fmt::print("\n");
}

int cmd_run(const JobOptions& o, const GlobalOptions& g, bool train_only) {
    std::vector<std::string> extra;
    if (train_only) {
        extra.emplace_back("pipeline=[{learner: full_precision}]");
    }
    pf::Job job = load(o, g, extra);  // validated once, before any worker starts
    std::optional<pf::dist::World> world = pf::dist::world_from_environment();
    if (o.nproc > 1) {
        PF_CHECK(!world, ConfigError,
                 "--nproc {}: this process already runs under a launcher (WORLD_SIZE={}); use "
                 "the launcher's worker count or --nproc, not both",
                 o.nproc, world ? world->world_size : 1);
        // The workers: this command line without --nproc.
        std::vector<std::string> args;
        for (size_t i = 0; i < o.argv.size(); ++i) {
            if (o.argv[i] == "--nproc") {
                ++i;
            } else if (o.argv[i].rfind("--nproc=", 0) != 0) {
                args.push_back(o.argv[i]);
            }
        }
        return pf::launch_local_workers(o.nproc, args);
    }
    if (world && world->rank > 0) {
        // The other workers speak up only for trouble, and say who they are.
        spdlog::default_logger()->set_pattern(
            fmt::format("[%H:%M:%S] [rank {}] [%^%l%$] %v", world->rank));
        if (spdlog::get_level() < spdlog::level::warn) {
            spdlog::set_level(spdlog::level::warn);
        }
    }
    pf::install_stop_handlers();
    json summary;
    try {
        if (world) {
            pf::dist::init(*world, pf::dist::options_from_environment());
        }
        summary = pf::run_job(job, {o.resume, o.stop_after_steps});
    } catch (const pf::Interrupted&) {
        pf::dist::finish();  // every worker stopped at the same step; rank 0 saved it
        throw;
    } catch (const std::exception& e) {
        pf::dist::finish(e.what());
        throw;
    }
    pf::dist::finish();
    if (world && world->rank > 0) {
        return 0;  // rank 0 prints the result
    }
    if (g.json) {
        std::cout << pf::json_text(summary) << std::endl;
    } else {
        print_summary(summary);
    }
    return 0;
}

int cmd_tune(const JobOptions& o,
             const std::string& space_path,
             const std::string& out,
             const GlobalOptions& g) {
    const pf::TuneSpace space = pf::load_tune_space(space_path);
    std::vector<std::string> overrides = o.overrides;
    if (g.threads >= 0) {
        overrides.push_back(fmt::format("threads={}", g.threads));
    }
    pf::install_stop_handlers();
    const json r = pf::run_tune(space, {o.config, overrides, out, o.resume});
    if (g.json) {
        std::cout << pf::json_text(r) << std::endl;
        return 0;
    }
    fmt::print("\n{:<7}{:<8}{:>12}", "trial", "status", r["objective"].get<std::string>());
    for (const auto& p : space.params) {
        fmt::print("  {}", p.key);
    }
    fmt::print("  seconds\n");
    for (const auto& t : r["trials"]) {
        fmt::print("{:<7}{:<8}{:>12}", t["trial"].get<int>(), t["status"].get<std::string>(),
                   t.contains("objective") ? fmt::format("{:.4g}", t["objective"].get<double>())
                                           : std::string("-"));
        for (const auto& p : space.params) {
            fmt::print("  {:.6g}", t[p.key].get<double>());
        }
        fmt::print("  {:.0f}\n", t["seconds"].get<double>());
    }
    fmt::print("\nbest: trial {} ({} {:.4g}); job written to {}\n", r["best_trial"].get<int>(),
               r["objective"].get<std::string>(), r["best_objective"].get<double>(),
               r["best_job"].get<std::string>());
    return 0;
}

int cmd_eval(const std::string& model_path, const JobOptions& o, const GlobalOptions& g) {
    pf::Job job = load(o, g);
    pf::configure_threads(job.threads);
    pf::check_blas();
    pf::ModelFile file = pf::load_any_model(model_path);
    pf::DataBundle data = pf::load_data(job.data, job.seed);
    PF_CHECK(file.graph.input_shape() == data.input_shape, ConfigError,
             "failed to evaluate {}: it takes input [{}] but {} gives [{}]", model_path,
             fmt::join(file.graph.input_shape(), ", "), job.data.dataset,
             fmt::join(data.input_shape, ", "));
    PF_CHECK(file.graph.num_classes() >= data.num_classes, ConfigError,
             "failed to evaluate {}: it has {} outputs but {} has {} classes", model_path,
             file.graph.num_classes(), job.data.dataset, data.num_classes);
    if (!file.meta.mean.empty() &&
        (job.source.overridden.count("data.mean") == 0 && job.source.file == "<defaults>")) {
        data.mean = file.meta.mean;  // without a job, normalise as the model was trained
        data.std = file.meta.std;
    }
    pf::Model model(pf::fold_batch_norm(file.graph), file.meta);  // inference: BN folded
    auto loader = data.test_loader(job.data);
    pf::EvalResult r = pf::evaluate(model, *loader);
    if (g.json) {
        std::cout << pf::json_text(json{{"model", model_path},
                                        {"dataset", job.data.dataset},
                                        {"top1", r.top1},
                                        {"top5", r.top5},
                                        {"loss", r.loss},
                                        {"samples", r.samples}})
                  << std::endl;
    } else {
        fmt::print("{}: top-1 {:.2f}%  top-5 {:.2f}%  loss {:.4f}  on {} {} test images\n",
                   model_path, r.top1, r.top5, r.loss, r.samples, job.data.dataset);
    }
    return 0;
}

int cmd_learners(const GlobalOptions& g) {
    const auto& registry = pf::builtin_registry();
    if (g.json) {
        json out = json::array();
        for (const auto& name : registry.names()) {
            out.push_back({{"name", name}, {"summary", registry.get(name).summary}});
        }
        std::cout << pf::json_text(out) << std::endl;
        return 0;
    }
    for (const auto& name : registry.names()) {
        fmt::print("{:<28}{}\n", name, registry.get(name).summary);
    }
    return 0;
}

/// `check`: the regression gate — exit 1 when a limited metric regressed, 0 otherwise.
int cmd_check(const std::string& baseline_path,
              const std::string& results_path,
              const std::vector<pf::MetricLimit>& given,
              const std::string& write_baseline,
              const GlobalOptions& g) {
    // The limits given, else those the baseline file states, else the default gate.
    std::vector<pf::MetricLimit> limits = given;
    if (limits.empty() && !baseline_path.empty()) {
        limits = pf::load_baseline_limits(baseline_path);
    }
    if (limits.empty()) {
        limits.push_back({"top1", pf::MetricLimit::kDrop, 0.3});
    }
    if (!write_baseline.empty()) {
        const pf::RunMetrics results = pf::load_run_metrics(results_path);
        const std::time_t now = std::time(nullptr);
        char day[16];
        std::strftime(day, sizeof day, "%Y-%m-%d", std::gmtime(&now));
        pf::write_baseline(results, limits,
                           fmt::format("measured: {} on a {} CPU ({} cores), written {} by "
                                       "pocketflow check --write-baseline",
                                       results_path, pf::cpu_target("native").description,
                                       pf::resolve_threads(0), day),
                           write_baseline);
        fmt::print("baseline: {} run(s) of {} written to {}\n", results.size(), results_path,
                   write_baseline);
        return 0;
    }
    PF_CHECK(!baseline_path.empty(), ConfigError,
             "check: give --baseline (or --write-baseline to make one from --results)");
    const auto rows = pf::check_regressions(pf::load_run_metrics(baseline_path),
                                            pf::load_run_metrics(results_path), limits);
    int regressed = 0;
    for (const auto& r : rows) {
        regressed += r.regressed ? 1 : 0;
    }
    if (g.json) {
        json out = {{"baseline", baseline_path},
                    {"results", results_path},
                    {"regressions", regressed},
                    {"rows", json::array()}};
        for (const auto& r : rows) {
            out["rows"].push_back({{"entry", r.entry},
                                   {"metric", r.metric},
                                   {"baseline", r.baseline},
                                   {"result", r.result},
                                   {"limit", r.limit},
                                   {"regressed", r.regressed}});
        }
        std::cout << pf::json_text(out) << std::endl;
    } else {
        fmt::print("{:<40}{:<14}{:>14}{:>14}{:>12}  {:<14}{}\n", "entry", "metric", "baseline",
                   "result", "change", "limit", "status");
        for (const auto& r : rows) {
            std::string name =
                r.entry.size() > 39 ? "..." + r.entry.substr(r.entry.size() - 36) : r.entry;
            fmt::print("{:<40}{:<14}{:>14.6g}{:>14.6g}{:>+12.4g}  {:<14}{}\n", name, r.metric,
                       r.baseline, r.result, r.result - r.baseline, r.limit,
                       r.regressed ? "REGRESSED" : "ok");
        }
        fmt::print("{} of {} checks regressed\n", regressed, rows.size());
    }
    return regressed > 0 ? 1 : 0;
}

/// `report`: run and sweep directories as one self-contained HTML page.
int cmd_report(const std::vector<std::string>& inputs,
               const std::string& out,
               const std::string& title,
               const std::string& chartjs,
               const GlobalOptions& g) {
    const std::string library = pf::find_chartjs(chartjs);  // before the work: say what is missing
    const json data = pf::collect_report(inputs);
    const std::string page = pf::render_report(
        data, library,
        title.empty() ? fmt::format("pocketflow report: {}", pf::join(inputs, ", ")) : title);
    pf::write_file_atomic(out, page);
    if (g.json) {
        std::cout << pf::json_text(json{
                         {"report", out}, {"runs", data["runs"].size()}, {"bytes", page.size()}})
                  << std::endl;
    } else {
        fmt::print("report: {} run(s) in {} ({})\n", data["runs"].size(), out,
                   pf::human_bytes(static_cast<double>(page.size())));
    }
    return 0;
}

/// `sweep`: the job under a grid or list of overrides; a results table at the end.
int cmd_sweep(pf::SweepOptions o,
              const std::vector<std::string>& grid,
              const std::string& file,
              const GlobalOptions& g) {
    for (const auto& text : grid) {
        const auto eq = text.find('=');
        PF_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < text.size(), ConfigError,
                 "--grid {}: expected key=v1,v2,... (e.g. --grid pipeline.0.flops_target=0.3,0.5)",
                 text);
        o.grid.push_back({text.substr(0, eq), pf::split_values(text.substr(eq + 1))});
    }
    if (!file.empty()) {
        pf::load_sweep_file(file, o);
    }
    if (o.out.empty()) {
        o.out = (std::filesystem::path("runs") /
                 ("sweep-" + (o.config.empty() ? std::string("default")
                                               : std::filesystem::path(o.config).stem().string())))
                    .string();
    }
    o.threads = g.threads < 0 ? 0 : static_cast<int>(g.threads);
    o.executable = std::filesystem::read_symlink("/proc/self/exe").string();
    const json r = pf::run_sweep(o);
    int failed = 0;
    for (const auto& run : r["runs"]) {
        failed += run["status"] == "failed" ? 1 : 0;
    }
    if (g.json) {
        std::cout << pf::json_text(r) << std::endl;
        return failed > 0 ? 1 : 0;
    }
    fmt::print("{:<56}{:<10}{:>9}{:>11}{:>12}{:>12}{:>12}{:>10}\n", "run", "status", "top-1",
               "val top-1", "MACs", "bytes", "latency ms", "seconds");
    for (const auto& run : r["runs"]) {
        std::string name = run["name"].get<std::string>();
        if (name.size() > 55) {
            name = "..." + name.substr(name.size() - 52);
        }
        auto num = [&](const char* k, const char* f) {
            return run.contains(k) ? fmt::format(fmt::runtime(f), run[k].get<double>())
                                   : std::string("-");
        };
        fmt::print("{:<56}{:<10}{:>9}{:>11}{:>12}{:>12}{:>12}{:>10}\n", name,
                   run["status"].get<std::string>(), num("top1", "{:.2f}%"),
                   num("val_top1", "{:.2f}%"), num("macs", "{:.4g}"), num("file_bytes", "{:.0f}"),
                   num("latency_ms", "{:.3f}"), num("wall_seconds", "{:.0f}"));
    }
    fmt::print("results: {} and {}{}\n", r["results_csv"].get<std::string>(),
               r["results_json"].get<std::string>(),
               failed ? fmt::format(" ({} failed: see their .log)", failed) : "");
    return failed > 0 ? 1 : 0;
}

int run_cli(int argc, char** argv) {
    CLI::App app{"pocketflow: compress deep neural networks for phones and edge devices"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("pocketflow ") + POCKETFLOW_VERSION);
    GlobalOptions g;
    app.add_flag("--json", g.json,
                 "print the result as one JSON object on stdout (logs go to stderr)");
    app.add_option("--threads", g.threads,
                   "LibTorch threads (0: all cores; default: the job's `threads`)")
        ->check(CLI::Range(0, 1024));
    app.add_option("--log-level", g.log_level, "trace | debug | info | warn | error | off")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
    app.fallthrough();

    JobOptions train_opts, compress_opts, eval_opts;
    auto* train = app.add_subcommand(
        "train", "train a model at full precision (compress with one full_precision stage)");
    add_job_options(train, train_opts, false);
    train->add_flag("--resume", train_opts.resume,
                    "continue the job's last run from its checkpoints");
    train->add_option("--stop-after-steps", train_opts.stop_after_steps)->group("");
    add_nproc_option(train, train_opts);

    auto* compress = app.add_subcommand("compress", "run a job's pipeline of learners");
    add_job_options(compress, compress_opts, true);
    compress->add_flag("--resume", compress_opts.resume,
                       "continue the job's last run from its checkpoints");
    compress->add_option("--stop-after-steps", compress_opts.stop_after_steps)->group("");
    add_nproc_option(compress, compress_opts);
    train_opts.argv = compress_opts.argv = std::vector<std::string>(argv, argv + argc);

    std::string eval_model;
    auto* eval = app.add_subcommand("eval", "test accuracy (top-1, top-5) and loss of a model");
    eval->add_option("-m,--model", eval_model, "model file (.pfm or .onnx)")->required();
    add_job_options(eval, eval_opts, false);

    std::string info_model, info_arch, info_input;
    int64_t info_classes = 10;
    auto* info = app.add_subcommand("info", "per-layer table: output shapes, params, MACs");
    info->add_option("-m,--model", info_model, "model file (.pfm or .onnx)");
    info->add_option("--arch", info_arch, "zoo architecture: " + pf::join(pf::zoo_names(), ", "));
    info->add_option("--input", info_input, "input shape CxHxW for --arch, e.g. 3x32x32");
    info->add_option("--num-classes", info_classes, "classes for --arch")
        ->check(CLI::Range(1, 1000000));

    auto* learners = app.add_subcommand("learners", "list the registered learners");

    std::string export_model, export_format = "onnx", export_out, export_batch = "dynamic";
    int64_t export_opset = 13;
    auto* exporter = app.add_subcommand("export", "write a model as ONNX (BN folded, real shapes)");
    exporter->add_option("-m,--model", export_model, "model file (.pfm or .onnx)")->required();
    exporter->add_option("--format", export_format, "output format")
        ->check(CLI::IsMember({"onnx"}));
    exporter->add_option("-o,--output", export_out,
                         "output file (default: the model's name with .onnx)");
    exporter->add_option("--opset", export_opset, "ONNX opset")->check(CLI::Range(11, 17));
    exporter->add_option("--batch", export_batch, "dynamic or 1")
        ->check(CLI::IsMember({"dynamic", "1"}));
    std::string export_weights = "decoded";
    exporter
        ->add_option("--weights", export_weights,
                     "codebook layers: decoded float weights, or codebook + uint8 indices + Gather")
        ->check(CLI::IsMember({"decoded", "codebook"}));
    bool export_check = false;
    exporter->add_flag(
        "--check", export_check,
        "run the result (and an ONNX input) in ONNX Runtime and compare with pocketflow");
    JobOptions export_job;  // --check of a quantized model: this job's test images
    add_job_options(exporter, export_job, false);
    std::string export_reference;
    exporter->add_option("--reference", export_reference,
                         "--check: also the top-1 agreement with this model (e.g. the float "
                         "parent of a quantized one)");

    std::vector<std::string> bench_models;
    std::string bench_batches = "1,64", bench_runtimes = "libtorch,onnxruntime";
    int64_t bench_warmup = 5, bench_repeat = 30;
    auto* bench = app.add_subcommand("bench", "latency, size and MACs of models side by side");
    bench
        ->add_option("-m,--model", bench_models,
                     "model files (.pfm or .onnx); the first is the reference")
        ->required()
        ->take_all()
        ->allow_extra_args(false);
    bench->add_option("--batch", bench_batches, "comma-separated batch sizes");
    bench->add_option("--runtime", bench_runtimes,
                      "libtorch, onnxruntime, or both (comma-separated)");
    bench->add_option("--warmup", bench_warmup, "untimed runs first")->check(CLI::Range(0, 1000));
    bench->add_option("--repeat", bench_repeat, "timed runs")->check(CLI::Range(1, 100000));

    JobOptions tune_opts;
    std::string tune_space, tune_out;
    pf::SweepOptions sweep_opts;
    std::vector<std::string> sweep_grid;
    std::string sweep_file;
    auto* sweep = app.add_subcommand(
        "sweep", "run a job under a grid or list of overrides (resumable); a results table");
    sweep->add_option("-c,--config", sweep_opts.config, "job file (YAML; default: built-in job)");
    sweep->add_option("--set", sweep_opts.overrides, "override a key in every run (repeatable)")
        ->take_all()
        ->allow_extra_args(false);
    sweep
        ->add_option("--grid", sweep_grid,
                     "key=v1,v2,...: one axis of the grid (repeatable; every combination runs)")
        ->take_all()
        ->allow_extra_args(false);
    sweep->add_option(
        "--file", sweep_file,
        "sweep file: grid: {key: [values]}, runs: [{key: value, ...}], jobs: [{name: n, "
        "config: job.yaml, set: {...}}] (a benchmark suite)");
    sweep->add_option("-o,--out", sweep_opts.out, "sweep directory (default runs/sweep-<job>)");
    sweep->add_option("--jobs", sweep_opts.jobs, "runs at a time (the cores are divided)")
        ->check(CLI::Range(1, 256));
    sweep
        ->add_option("--latency", sweep_opts.latency_batch,
                     "then time every finished model in LibTorch at this batch (latency_ms)")
        ->check(CLI::Range(1, 4096));
    std::string check_baseline, check_results, check_write;
    std::vector<std::string> check_drop, check_rise, check_ratio;
    auto* check = app.add_subcommand(
        "check", "regression gate: compare runs with a baseline, exit 1 on a regression");
    check->add_option(
        "--baseline", check_baseline,
        "run directory, summary.json, {\"runs\": [...]} table or bench --json output");
    check->add_option("--results", check_results, "the same kinds of file, to check")->required();
    check->add_option("--write-baseline", check_write,
                      "instead of checking: write --results as a baseline file here (with the "
                      "limits given or --baseline's)");
    check->add_option("--max-drop", check_drop,
                      "metric=x: fail when it falls more than x below the baseline (without "
                      "limits: the baseline file's \"limits\", else top1=0.3)");
    check->add_option("--max-rise", check_rise,
                      "metric=x: fail when it rises more than x above the baseline (e.g. loss)");
    check->add_option("--max-ratio,--max-slowdown", check_ratio,
                      "metric=r: fail when result / baseline exceeds r (e.g. median_ms=1.10, "
                      "file_bytes=1.05)");
    std::vector<std::string> report_inputs;
    std::string report_out = "report.html", report_title, report_chartjs;
    auto* report = app.add_subcommand(
        "report", "one self-contained HTML page (Chart.js) of run and sweep directories");
    report->add_option("dirs", report_inputs, "run directories and sweep directories")->required();
    report->add_option("-o,--out", report_out, "the HTML file to write (default report.html)");
    report->add_option("--title", report_title, "page title");
    report->add_option("--chartjs", report_chartjs,
                       "Chart.js 3.x UMD file to inline (default: Debian's libjs-chart.js)");
    auto* tune = app.add_subcommand(
        "tune", "Bayesian optimisation of job keys (GP + expected improvement), one run a trial");
    add_job_options(tune, tune_opts, false);
    tune->add_option("--space", tune_space, "search space (YAML: objective, trials, params)")
        ->required();
    tune->add_option("--out", tune_out, "tune directory (default runs/<job name>-tune)");
    tune->add_flag("--resume", tune_opts.resume, "continue an interrupted tune in its directory");

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        // A mistyped command is named (CLI11 only says that one is required).
        for (int i = 1; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--threads" || a == "--log-level") {
                ++i;  // its value
            } else if (!a.empty() && a[0] != '-') {
                std::vector<std::string> names;
                for (const auto* sub : app.get_subcommands({})) {
                    names.push_back(sub->get_name());
                }
                if (std::find(names.begin(), names.end(), a) == names.end()) {
                    spdlog::error("unknown command '{}' (commands: {})", pf::shorten(a, 80),
                                  pf::join(names, ", "));
                    return 2;
                }
                break;
            }
        }
        app.exit(e);
        return 2;
    }
    spdlog::set_level(spdlog::level::from_str(g.log_level));
    spdlog::cfg::load_env_levels();

    if (train->parsed()) {
        return cmd_run(train_opts, g, true);
    }
    if (compress->parsed()) {
        return cmd_run(compress_opts, g, false);
    }
    if (eval->parsed()) {
        return cmd_eval(eval_model, eval_opts, g);
    }
    if (info->parsed()) {
        return cmd_info(info_model, info_arch, info_input, info_classes, g);
    }
    if (learners->parsed()) {
        return cmd_learners(g);
    }
    if (exporter->parsed()) {
        return cmd_export(export_model, export_format, export_out, export_opset, export_batch,
                          export_weights, export_check, export_job, export_reference, g);
    }
    if (tune->parsed()) {
        return cmd_tune(tune_opts, tune_space, tune_out, g);
    }
    if (sweep->parsed()) {
        return cmd_sweep(sweep_opts, sweep_grid, sweep_file, g);
    }
    if (report->parsed()) {
        return cmd_report(report_inputs, report_out, report_title, report_chartjs, g);
    }
    if (check->parsed()) {
        std::vector<pf::MetricLimit> limits;
        for (const auto& t : check_drop) {
            limits.push_back(pf::parse_metric_limit(t, pf::MetricLimit::kDrop, "--max-drop"));
        }
        for (const auto& t : check_rise) {
            limits.push_back(pf::parse_metric_limit(t, pf::MetricLimit::kRise, "--max-rise"));
        }
        for (const auto& t : check_ratio) {
            limits.push_back(pf::parse_metric_limit(t, pf::MetricLimit::kRatio, "--max-ratio"));
        }
        return cmd_check(check_baseline, check_results, limits, check_write, g);
    }
    if (bench->parsed()) {
        return cmd_bench(bench_models, bench_batches, bench_runtimes, bench_warmup, bench_repeat,
                         g);
    }
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    pf::configure_allocator();
    auto logger = spdlog::stderr_color_mt("pocketflow");
    logger->set_pattern("[%H:%M:%S] [%^%l%$] %v");
    spdlog::set_default_logger(logger);
    // Messages are capped: a hostile megabyte-long value is never printed in full.
    auto report = [](const std::string& message) {
        spdlog::error("{}", pf::shorten(message, 2000));
    };
    try {
        return run_cli(argc, argv);
    } catch (const pf::Error& e) {
        report(e.what());
        return e.exit_code();
    } catch (const c10::Error& e) {
        report(e.what_without_backtrace());
        return 1;
    } catch (const YAML::Exception& e) {
        report(e.what());
        return 2;
    } catch (const std::filesystem::filesystem_error& e) {
        // A path the file system refuses (a loop of links, a file where a directory is needed,
        // a name too long) is the input's fault; a full disk or an I/O error is not.
        const int err = e.code().value();
        const bool input = err == ELOOP || err == ENAMETOOLONG || err == ENOTDIR || err == ENOENT ||
                           err == EISDIR || err == EEXIST || err == EACCES;
        report(fmt::format("{}{}: {}", pf::shorten(e.path1().string()),
                           e.path2().empty() ? "" : " -> " + pf::shorten(e.path2().string()),
                           e.code().message()));
        return input ? 2 : 1;
    } catch (const std::exception& e) {
        report(e.what());
        return 1;
    }
}
