// SPDX-License-Identifier: Apache-2.0
// Runs a job: run directory, model, pipeline of learner stages, final evaluation and outputs.
// What the runner shares with the learners (threads, models, trainers, loaders): stage_support.cpp.
#include <algorithm>
#include <chrono>
#include <filesystem>

#include <ATen/Context.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

RunDir::RunDir(fs::path path) : path_(std::move(path)) {
    std::error_code ec;
    fs::create_directories(path_ / "checkpoints", ec);
    PF_CHECK(!ec, IoError, "failed to create run directory {}: {}", path_.string(), ec.message());
    // A process killed while writing leaves "<file>.tmp.<pid>" (write_file_atomic) anywhere in
    // the run (checkpoints, search/stage<i>/ logs): remove those of processes that are gone.
    remove_stale_temp_files(path_, true);
    metrics_.open(path_ / "metrics.jsonl", std::ios::app);
    PF_CHECK(metrics_.good(), IoError, "failed to open {}", (path_ / "metrics.jsonl").string());
}

fs::path RunDir::checkpoint(const std::string& tag) const {
    return path_ / "checkpoints" / (tag + ".ckpt");
}

void RunDir::log_metrics(const json& row) {
    std::lock_guard<std::mutex> lock(mutex_);
    metrics_ << json_text(row) << '\n';
    metrics_.flush();
}

void LearnerRegistry::add(LearnerInfo info) {
    PF_CHECK(!info.name.empty() && info.create, Error,
             "learner registration needs a name and a factory");
    PF_CHECK(learners_.count(info.name) == 0, Error, "learner '{}' registered twice", info.name);
    learners_.emplace(info.name, std::move(info));
}

const LearnerInfo& LearnerRegistry::get(const std::string& name) const {
    auto it = learners_.find(name);
    if (it == learners_.end()) {
        std::string hint = nearest_match(name, names());
        throw ConfigError(fmt::format("unknown learner '{}'{}; available: {}", name,
                                      hint.empty() ? "" : fmt::format("; did you mean '{}'?", hint),
                                      join(names(), ", ")));
    }
    return it->second;
}

std::vector<std::string> LearnerRegistry::names() const {
    std::vector<std::string> out;
    for (const auto& [name, info] : learners_) {
        out.push_back(name);
    }
    return out;
}

ConfigReader stage_reader(const StageConfig& stage, const Job& job) {
    ConfigReader r(stage.options, stage.path, job.source);
    std::string name;
    r.read("learner", name, "learner name");
    return r;
}

const LearnerRegistry& builtin_registry() {
    static const LearnerRegistry registry = [] {
        LearnerRegistry r;
        register_builtin_learners(r);
        return r;
    }();
    return registry;
}

namespace {

fs::path choose_run_dir(const Job& job, bool resume) {
    if (!job.output_dir.empty()) {
        return job.output_dir;
    }
    fs::path base = fs::path("runs") / job.name;
    if (resume) {
        std::vector<fs::path> runs;
        if (fs::is_directory(base)) {
            for (const auto& e : fs::directory_iterator(base)) {
                if (e.is_directory() && fs::exists(e.path() / "resolved_config.yaml")) {
                    runs.push_back(e.path());
                }
            }
        }
        PF_CHECK(!runs.empty(), InputError, "failed to resume job {}: no earlier run under {}",
                 job.name, base.string());
        std::sort(runs.begin(), runs.end());
        return runs.back();
    }
    fs::path dir = base / timestamp_now();
    for (int k = 2; fs::exists(dir); ++k) {
        dir = base / fmt::format("{}-{}", timestamp_now(), k);
    }
    return dir;
}

/// Whether a run directory holds something a run produced: a checkpoint, a stage's or the job's
/// model or summary, or a search log.
bool holds_results(const fs::path& dir) {
    std::error_code ec;
    auto non_empty = [&](const fs::path& d) {
        return fs::is_directory(d, ec) && fs::directory_iterator(d, ec) != fs::directory_iterator();
    };
    if (non_empty(dir / "checkpoints") || non_empty(dir / "search") ||
        fs::exists(dir / "summary.json", ec)) {
        return true;
    }
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const std::string name = e.path().filename().string();
        if (e.path().extension() == ".pfm" || e.path().extension() == ".onnx" ||
            (name.rfind("stage", 0) == 0 && e.path().extension() == ".json")) {
            return true;
        }
    }
    return false;
}

}  // namespace

std::vector<std::unique_ptr<Learner>> create_learners(const Job& job) {
    std::vector<std::unique_ptr<Learner>> learners;
    for (const auto& stage : job.pipeline) {
        try {
            learners.push_back(builtin_registry().get(stage.learner).create(stage, job));
        } catch (const YAML::Exception& e) {  // a conversion a learner made itself
            throw ConfigError(fmt::format("{}:{}:{}: {}: {}", job.source.file, e.mark.line + 1,
                                          e.mark.column + 1, stage.path, e.msg));
        }
    }
    return learners;
}

json run_job(const Job& job, const RunOptions& options) {
    auto start = std::chrono::steady_clock::now();
    int threads = configure_threads(job.threads);
    check_blas();
    // Validate every stage before any work starts.
    std::vector<std::unique_ptr<Learner>> learners = create_learners(job);
    // Data-parallel workers: rank 0 owns the run directory; the others write what they must
    // (their stage files, search caches) to a private scratch directory, removed at the end.
    const bool main_worker = dist::is_main();
    fs::path dir = main_worker ? choose_run_dir(job, options.resume)
                               : fs::temp_directory_path() /
                                     fmt::format("pocketflow-rank{}-{}", dist::rank(), ::getpid());
    struct ScratchGuard {
        fs::path path;
        ~ScratchGuard() {
            std::error_code ec;
            if (!path.empty()) {
                fs::remove_all(path, ec);
            }
        }
    } scratch{main_worker ? fs::path() : dir};
    // The run directory must be creatable: a file in its place or on its path, or a path the
    // file system refuses (a symlink loop), is the job's mistake (exit 2), named before any work.
    for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
        std::error_code ec;
        const auto st = fs::status(p, ec);
        if (ec && ec != std::errc::no_such_file_or_directory) {
            throw InputError(fmt::format("output directory {}: {}: {}", shorten(dir.string()),
                                         shorten(p.string()), ec.message()));
        }
        if (fs::exists(st) && !fs::is_directory(st)) {
            throw InputError(fmt::format("output directory {}: {} is a file, not a directory",
                                         shorten(dir.string()), shorten(p.string())));
        }
        if (p == p.parent_path()) {
            break;
        }
    }
    const std::string config_text = resolved_config_text(job);
    fs::path config_path = dir / "resolved_config.yaml";
    // A directory that holds a run of another job is never mixed into this one: resuming would
    // take its stage files, and a fresh run would rewrite its config and then be resumable from
    // them. (A run that stopped before any result, e.g. on a config error a learner found, is
    // not worth keeping; the thread count changes the speed, not the job.)
    if (main_worker && fs::exists(config_path) && (options.resume || holds_results(dir)) &&
        !same_job(read_file(config_path), config_text)) {
        throw ConfigError(
            options.resume
                ? fmt::format("failed to resume in {}: the job differs from the run's "
                              "resolved_config.yaml; resume with the same job and overrides, or "
                              "start a new run",
                              dir.string())
                : fmt::format("failed to start in {}: it holds a run of another job (its "
                              "resolved_config.yaml differs); give another output_dir, or remove "
                              "that run first",
                              dir.string()));
    }
    RunDir run(dir);
    write_file_atomic(config_path, config_text);
    std::shared_ptr<spdlog::sinks::sink> file_sink;  // rank 0's log only
    if (main_worker) {
        file_sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>((dir / "log.txt").string());
        spdlog::default_logger()->sinks().push_back(file_sink);
    }
    struct SinkGuard {
        std::shared_ptr<spdlog::sinks::sink> sink;
        ~SinkGuard() {
            auto& sinks = spdlog::default_logger()->sinks();
            sinks.erase(std::remove(sinks.begin(), sinks.end(), sink), sinks.end());
        }
    } guard{file_sink};
    spdlog::info("run directory {} ({} threads{})", dir.string(), threads,
                 options.resume ? ", resuming" : "");

    DataBundle data = load_data(job.data, job.seed);
    spdlog::info("data {}: {} train, {} validation, {} test images of [{}], {} classes",
                 job.data.dataset, data.train_indices.size(), data.val_indices.size(),
                 data.test_indices.size(), fmt::join(data.input_shape, ", "), data.num_classes);
    auto model = make_model(job, data.input_shape, data.num_classes, data.mean, data.std);
    restore_batch_norm(job, data, model);
    dist::broadcast_model(model);  // every worker starts from rank 0's weights
    const int64_t macs_before = model->graph().total_macs();
    const int64_t params_before = model->graph().total_params();
    spdlog::info("model {}: {} params, {} MACs", model->meta().arch,
                 human_count(static_cast<double>(params_before)),
                 human_count(static_cast<double>(macs_before)));

    json stages = json::array();
    for (size_t i = 0; i < job.pipeline.size(); ++i) {
        const StageConfig& stage = job.pipeline[i];
        fs::path stage_model = dir / fmt::format("stage{}_{}.pfm", i, stage.learner);
        fs::path stage_summary = dir / fmt::format("stage{}_{}.json", i, stage.learner);
        // Rank 0 decides (its run directory) and hands the stage's result to the others.
        const std::string done = dist::broadcast_bytes(
            main_worker && options.resume && fs::exists(stage_model) && fs::exists(stage_summary)
                ? read_file(stage_summary)
                : "");
        if (!done.empty()) {
            if (main_worker) {
                ModelFile file = load_model(stage_model.string());
                model = std::make_shared<Model>(std::move(file.graph), file.meta);
            }
            dist::broadcast_model(model);
            stages.push_back(json::parse(done));
            spdlog::info("stage {} ({}) already done: loaded {}", i, stage.learner,
                         stage_model.string());
            continue;
        }
        spdlog::info("stage {} of {}: {}", i + 1, job.pipeline.size(), stage.learner);
        RunContext ctx{job,
                       stage,
                       static_cast<int>(i),
                       model,
                       data,
                       run,
                       options.resume,
                       options.stop_after_steps,
                       std::make_shared<const Model>(model->graph().clone(), model->meta())};
        // Each stage draws from its own seeded stream of LibTorch's global generator (dropout
        // masks): a stage rerun on resume, after the earlier ones were loaded from their files,
        // draws what it drew in the uninterrupted run. (A checkpoint inside it restores the
        // generator's state at that point.)
        at::manual_seed(job.seed * 1000003 + i + 1);
        auto stage_start = std::chrono::steady_clock::now();
        json summary = learners[i]->run(ctx);
        model = ctx.model;
        // Whatever a learner decided on each worker, rank 0's graph is the stage's result.
        dist::broadcast_model(model);
        summary["learner"] = stage.learner;
        summary["seconds"] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - stage_start).count();
        summary["params"] = model->graph().total_params();
        summary["macs"] = model->graph().total_macs();
        save_model(stage_model.string(), model->graph(), model->meta());
        write_file_atomic(stage_summary, json_text(summary, 2));
        stages.push_back(summary);
    }

    if (!main_worker) {  // the test evaluation, model files and export are rank 0's
        return {{"rank", dist::rank()}, {"stages", stages}};
    }
    auto test_loader = data.test_loader(job.data);
    EvalResult test = evaluate(*model, *test_loader);
    if (stop_requested()) {  // a signal during the final evaluation: the stages are saved
        throw Interrupted(fmt::format(
            "interrupted during the final evaluation; every stage is saved in {}: rerun with "
            "--resume to evaluate and finish",
            dir.string()));
    }
    fs::path model_path = dir / "model.pfm";
    save_model(model_path.string(), model->graph(), model->meta());
    json summary = {
        {"run_dir", dir.string()},
        {"model", model_path.string()},
        {"arch", model->meta().arch},
        {"dataset", job.data.dataset},
        {"top1", test.top1},
        {"top5", test.top5},
        {"loss", test.loss},
        {"samples", test.samples},
        {"params", model->graph().total_params()},
        {"macs", model->graph().total_macs()},
        {"params_before", params_before},
        {"macs_before", macs_before},
        {"weight_bytes", model->graph().weight_bytes()},
        {"file_bytes", fs::file_size(model_path)},
        {"threads", threads},
        {"seconds",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()},
        {"stages", stages}};
    if (!data.val_indices.empty()) {
        // The final model on the validation split: what `tune` and model selection may look at
        // (the test split is for reporting only).
        summary["val_top1"] = evaluate(*model, *data.val_loader(job.data)).top1;
    }
    if (job.export_.onnx) {
        fs::path onnx_path = dir / "model.onnx";
        export_onnx(onnx_path.string(), model->graph(), model->meta(),
                    {job.export_.opset, job.export_.dynamic_batch, true});
        summary["onnx"] = onnx_path.string();
        summary["onnx_bytes"] = fs::file_size(onnx_path);
        spdlog::info("wrote {}", onnx_path.string());
    }
    write_file_atomic(dir / "summary.json", json_text(summary, 2));
    spdlog::info("test top-1 {:.2f}% top-5 {:.2f}% loss {:.4f} on {} images; wrote {}", test.top1,
                 test.top5, test.loss, test.samples, model_path.string());
    return summary;
}

}  // namespace pocketflow
