// SPDX-License-Identifier: Apache-2.0
// The commands on model files: info, export (with its ONNX Runtime check) and bench.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/quant.h"
#include "pocketflow/report.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"
#include "pocketflow/weight_codec.h"
#include "pocketflow/zoo.h"

#include "cli.h"

namespace pocketflow::cli {

namespace pf = pocketflow;
using nlohmann::json;

namespace {

std::vector<int64_t> parse_shape(const std::string& text) {
    std::vector<int64_t> shape = pf::parse_positive_ints(text, 'x', 1 << 20, "--input");
    PF_CHECK(shape.size() == 3, ConfigError, "--input {}: expected CxHxW, e.g. 3x32x32", text);
    return shape;
}

}  // namespace

int cmd_info(const std::string& model_path,
             const std::string& arch,
             const std::string& input,
             int64_t classes,
             const GlobalOptions& g) {
    PF_CHECK(model_path.empty() != arch.empty(), ConfigError,
             "info: give exactly one of --model or --arch");
    pf::Graph graph;
    std::string title;
    if (!model_path.empty()) {
        graph = pf::load_any_model(model_path).graph;
        title = model_path;
    } else {
        PF_CHECK(!input.empty(), ConfigError,
                 "info --arch needs --input CxHxW, e.g. --input 3x32x32");
        graph = pf::build_zoo_model(arch, classes, parse_shape(input));
        title = fmt::format("{} [{}] {} classes", arch, input, classes);
    }
    const json described = pf::describe_model(graph);
    const json& layers = described["layers"];
    const auto stats = graph.layer_stats();
    const auto& nodes = graph.nodes();
    const bool quantized = described["quantized"].get<bool>();
    const bool compressed = described["compressed"].get<bool>();
    const int64_t params = graph.total_params(), macs = graph.total_macs();
    const int64_t float_bytes = described["float_bytes"].get<int64_t>();
    const int64_t weight_bytes = described["weight_bytes"].get<int64_t>();
    // Per node: quantization ("w8 a8": weight bits, bits of the value it outputs).
    auto bits_text = [&](size_t i) {
        const pf::QuantSpec& q = nodes[i].quant;
        std::string t = q.weight_bits > 0 ? fmt::format("w{}", q.weight_bits) : "";
        if (q.act_bits > 0) {
            t += fmt::format("{}a{}", t.empty() ? "" : " ", q.act_bits);
        }
        return t.empty() ? std::string("-") : t;
    };
    if (g.json) {
        std::cout << pf::json_text(described) << std::endl;
        return 0;
    }
    fmt::print("{}\n{:<28}{:<14}{:<18}{:>12}{:>14}", title, "layer", "op", "output", "params",
               "MACs");
    const bool sparse_or_coded = compressed && !quantized;
    if (quantized) {
        fmt::print("{:>10}{:>10}  {}", "bytes", "bits", "scales");
    } else if (sparse_or_coded) {
        fmt::print("{:>10}{:>10}  {}", "bytes", "zeros", "storage (positions / values)");
    }
    fmt::print("\n");
    for (size_t i = 0; i < stats.size(); ++i) {
        const auto& s = stats[i];
        fmt::print("{:<28}{:<14}{:<18}{:>12}{:>14}", s.name, pf::op_name(s.op),
                   fmt::format("{}", fmt::join(s.out_shape, "x")), s.params, s.macs);
        const json& row = layers[i];
        if (quantized) {
            std::string scales;
            if (row.contains("weight_scale")) {
                scales = fmt::format("w {:.3g}–{:.3g} (±{})", row["weight_scale"][0].get<double>(),
                                     row["weight_scale"][1].get<double>(),
                                     row["weight_range"].get<int>());
            }
            if (row.contains("act_scale")) {
                scales += fmt::format("{}out {:.3g} zp {}", scales.empty() ? "" : ", ",
                                      row["act_scale"].get<double>(),
                                      row["act_zero_point"].get<int64_t>());
            }
            fmt::print("{:>10}{:>10}  {}", row["bytes"].get<int64_t>(), bits_text(i), scales);
        } else if (sparse_or_coded && row.contains("storage")) {
            const json& st = row["storage"];
            fmt::print("{:>10}{:>9.1f}%  {} {} B / {}{} {} B", row["bytes"].get<int64_t>(),
                       100 * row["sparsity"].get<double>(), st["positions"].get<std::string>(),
                       st["position_bytes"].get<int64_t>(), st["values"].get<std::string>(),
                       row.contains("codebook_bits")
                           ? fmt::format(" ({} bits)", row["codebook_bits"].get<int>())
                           : "",
                       st["value_bytes"].get<int64_t>());
        } else if (sparse_or_coded) {
            fmt::print("{:>10}", row["bytes"].get<int64_t>());
        }
        fmt::print("\n");
    }
    fmt::print("{:<60}{:>12}{:>14}\ntotal: {} params, {} MACs, {} of weights{}\n", "total", params,
               macs, pf::human_count(static_cast<double>(params)),
               pf::human_count(static_cast<double>(macs)),
               pf::human_bytes(static_cast<double>(weight_bytes)),
               quantized ? " (quantized weights packed at their bit width)" : "");
    if (compressed) {
        fmt::print(
            "compression: {:.2f}x smaller than float32 ({}); {:.1f}% of the conv/linear "
            "weights are zero\n",
            static_cast<double>(float_bytes) /
                static_cast<double>(std::max<int64_t>(1, weight_bytes)),
            pf::human_bytes(static_cast<double>(float_bytes)),
            100 * described["sparsity"].get<double>());
    }
    return 0;
}

/// ONNX Runtime against pocketflow's own execution of the same graph on the same batch.
namespace {

struct OrtComparison {
    double max_rel_diff = 0;  ///< largest |difference| / max(1, largest |output|)
    double agreement = 1;     ///< fraction of samples with the same top-1 class
    /// Quantized graphs: the largest difference in 8-bit steps of the output's range (range of
    /// the simulated outputs / 255); else -1.
    double max_steps = -1;
    int64_t samples = 0;
};

OrtComparison compare_with_onnxruntime(const pf::Graph& graph,
                                       const std::string& onnx_path,
                                       const at::Tensor& x) {
    pf::Model model(graph.clone(), {});
    model.eval();
    at::Tensor y;
    {
        at::NoGradGuard no_grad;
        y = model.forward(x);
    }
    pf::OrtRun r = pf::run_onnxruntime(onnx_path, x);
    PF_CHECK(r.output.sizes() == y.sizes(), Error,
             "ONNX Runtime gave output shape [{}], LibTorch [{}]",
             fmt::join(r.output.sizes().vec(), ", "), fmt::join(y.sizes().vec(), ", "));
    OrtComparison c;
    at::Tensor diff = (r.output - y).abs();
    c.samples = y.size(0);
    c.max_rel_diff = diff.max().item<double>() / std::max(1.0, y.abs().max().item<double>());
    if (y.dim() == 2) {
        c.agreement = r.output.argmax(1).eq(y.argmax(1)).to(at::kDouble).mean().item<double>();
    }
    if (pf::is_quantized(graph)) {
        const double step = (y.max() - y.min()).item<double>() / 255.0;
        c.max_steps = diff.max().item<double>() / std::max(step, 1e-12);
    }
    return c;
}

/// The batch `export --check` runs: for a quantized model the first 256 test images of the job
/// when one is given (real inputs exercise the calibrated ranges), else 64 random ones; 2 random
/// inputs for a float model.
at::Tensor check_batch(const pf::Graph& graph, const JobOptions& o, const GlobalOptions& g) {
    const auto& shape = graph.input_shape();
    at::manual_seed(0);
    if (!pf::is_quantized(graph)) {
        return at::randn({2, shape[0], shape[1], shape[2]});
    }
    if (o.config.empty()) {
        return at::randn({64, shape[0], shape[1], shape[2]});
    }
    pf::Job job = load(o, g, {"data.test_limit=256"});
    pf::DataBundle data = pf::load_data(job.data, job.seed);
    PF_CHECK(data.input_shape == shape, ConfigError,
             "export --check: the model takes input [{}] but {} gives [{}]", fmt::join(shape, ", "),
             job.data.dataset, fmt::join(data.input_shape, ", "));
    auto loader = data.test_loader(job.data);
    std::vector<at::Tensor> images;
    loader->start_epoch(0);
    while (auto batch = loader->next()) {
        images.push_back(batch->images);
    }
    return at::cat(images).slice(0, 0, 256);  // (synthetic test sets ignore test_limit)
}

}  // namespace

int cmd_export(const std::string& model_path,
               const std::string& format,
               const std::string& out,
               int64_t opset,
               const std::string& batch,
               const std::string& weights,
               bool check,
               const JobOptions& check_job,
               const std::string& reference,
               const GlobalOptions& g) {
    PF_CHECK(format == "onnx", ConfigError, "--format {}: only onnx is supported", format);
    PF_CHECK(batch == "dynamic" || batch == "1", ConfigError, "--batch {}: expected dynamic or 1",
             batch);
    pf::ModelFile file = pf::load_any_model(model_path);
    std::string target =
        out.empty() ? std::filesystem::path(model_path).replace_extension(".onnx").string() : out;
    // The same file under another spelling (./m.onnx, d/../m.onnx, a link) is the same file.
    std::error_code same_error;
    PF_CHECK(!(std::filesystem::exists(target, same_error) &&
               std::filesystem::equivalent(target, model_path, same_error)),
             ConfigError, "failed to export {}: {} is the input file; give another -o", model_path,
             target);
    PF_CHECK(weights == "decoded" || weights == "codebook", ConfigError,
             "--weights {}: expected decoded or codebook", weights);
    pf::OnnxExportOptions options;
    options.opset = opset;
    options.dynamic_batch = batch == "dynamic";
    options.codebook_weights = weights == "codebook";
    pf::export_onnx(target, file.graph, file.meta, options);
    auto bytes = std::filesystem::file_size(target);
    json result = {{"model", model_path}, {"onnx", target}, {"bytes", bytes}, {"opset", opset}};
    if (check) {
        // The exported file in ONNX Runtime against pocketflow's own execution and, for an ONNX
        // input, the original file too (that is: the import was faithful). A quantized model is
        // compared with its simulation: top-1 agreement, and differences in quantization steps.
        const bool quantized = pf::is_quantized(file.graph);
        at::Tensor x = check_batch(file.graph, check_job, g);
        OrtComparison exported = compare_with_onnxruntime(file.graph, target, x);
        result["max_rel_diff_export"] = exported.max_rel_diff;
        // Each int8 layer may round a value differently from the simulation at a tie (ONNX Runtime
        // requantizes with one float multiplier); those one-step differences add up with depth
        // (ResNet-20 0.8 steps, torchvision ResNet-18 2.8: docs/performance.md).
        constexpr double kTolerance = 1e-4, kAgreement = 0.98, kSteps = 8.0;
        bool ok = exported.max_rel_diff <= kTolerance;
        if (quantized) {
            result["agreement"] = exported.agreement;
            result["check_samples"] = exported.samples;
            if (exported.max_steps >= 0) {
                result["max_steps"] = exported.max_steps;
            }
            ok = exported.agreement >= kAgreement &&
                 (exported.max_steps < 0 || exported.max_steps <= kSteps);
        }
        if (!reference.empty()) {
            // How often the deployed model picks the class its (float) parent picks.
            pf::ModelFile parent = pf::load_any_model(reference);
            pf::Model ref(pf::fold_batch_norm(parent.graph), parent.meta);
            ref.eval();
            at::NoGradGuard no_grad;
            at::Tensor want = ref.forward(x).argmax(1);
            at::Tensor got = pf::run_onnxruntime(target, x).output.argmax(1);
            result["reference_agreement"] = got.eq(want).to(at::kDouble).mean().item<double>();
            if (!g.json) {
                fmt::print(
                    "ONNX Runtime vs {} (pocketflow): top-1 agreement {:.2f}% on {} inputs\n",
                    reference, 100 * result["reference_agreement"].get<double>(), x.size(0));
            }
        }
        if (std::filesystem::path(model_path).extension() == ".onnx") {
            double original = compare_with_onnxruntime(file.graph, model_path, x).max_rel_diff;
            result["max_rel_diff_import"] = original;
            ok = ok && original <= kTolerance;
        }
        result["check"] = ok ? "passed" : "failed";
        if (!g.json && quantized) {
            fmt::print(
                "ONNX Runtime (int8) vs pocketflow's simulation on {} {} inputs: top-1 agreement "
                "{:.2f}%, max difference {} (max rel. diff {:.3g}): {}\n",
                exported.samples, check_job.config.empty() ? "random" : "test",
                100 * exported.agreement,
                exported.max_steps >= 0 ? fmt::format("{:.2f} steps", exported.max_steps) : "n/a",
                exported.max_rel_diff, ok ? "passed" : "FAILED");
        } else if (!g.json) {
            fmt::print("ONNX Runtime vs pocketflow: export max rel. diff {:.3g}{}: {}\n",
                       exported.max_rel_diff,
                       result.contains("max_rel_diff_import")
                           ? fmt::format(", original file {:.3g}",
                                         result["max_rel_diff_import"].get<double>())
                           : "",
                       ok ? "passed" : "FAILED");
        }
        PF_CHECK(ok, Error, "the ONNX Runtime check of {} failed ({})", target,
                 quantized ? fmt::format("top-1 agreement >= {:.0f}% and at most {} steps",
                                         100 * kAgreement, kSteps)
                           : fmt::format("tolerance {}", kTolerance));
    }
    if (g.json) {
        std::cout << pf::json_text(result) << std::endl;
    } else {
        fmt::print("wrote {} ({}, opset {}, {} batch)\n", target,
                   pf::human_bytes(static_cast<double>(bytes)), opset, batch);
    }
    return 0;
}

namespace {

struct Timing {
    double median_ms = 0, p90_ms = 0;
    double load_ms = -1;  ///< ONNX Runtime: median session creation time
};

Timing summarize(std::vector<double> times) {
    std::sort(times.begin(), times.end());
    auto pick = [&](double q) {
        return times[std::min(times.size() - 1,
                              static_cast<size_t>(q * static_cast<double>(times.size())))];
    };
    return {pick(0.5), pick(0.9)};
}

}  // namespace

int cmd_bench(const std::vector<std::string>& models,
              const std::string& batches_text,
              const std::string& runtimes_text,
              int64_t warmup,
              int64_t repeat,
              const GlobalOptions& g) {
    namespace fs = std::filesystem;
    int threads = pf::configure_threads(g.threads < 0 ? 0 : g.threads);
    pf::check_blas();
    std::vector<int64_t> batches = pf::parse_positive_ints(batches_text, ',', 4096, "--batch");
    std::vector<std::string> runtimes;
    for (const auto& r : {std::string("libtorch"), std::string("onnxruntime")}) {
        if (runtimes_text.find(r) != std::string::npos) {
            runtimes.push_back(r);
        }
    }
    PF_CHECK(!runtimes.empty(), ConfigError, "--runtime {}: expected libtorch, onnxruntime or both",
             runtimes_text);
    pf::ScopedTempDir scratch("pocketflow-bench");
    const fs::path& tmp = scratch.path();
    const bool want_ort =
        std::find(runtimes.begin(), runtimes.end(), "onnxruntime") != runtimes.end();
    struct Entry {
        std::string path, onnx_path;
        int64_t params = 0, macs = 0;
        uintmax_t bytes = 0;
        std::shared_ptr<pf::Model> model;
        bool quantized = false;
    };
    std::vector<Entry> entries;
    std::vector<int64_t> shape;
    for (size_t m = 0; m < models.size(); ++m) {
        Entry e;
        e.path = models[m];
        pf::ModelFile file = pf::load_any_model(e.path);
        PF_CHECK(m == 0 || file.graph.input_shape() == shape, ConfigError,
                 "failed to bench {}: it takes input [{}] but {} takes [{}]", e.path,
                 fmt::join(file.graph.input_shape(), ", "), models[0], fmt::join(shape, ", "));
        shape = file.graph.input_shape();
        e.onnx_path = e.path;
        if (want_ort && fs::path(e.path).extension() != ".onnx") {
            e.onnx_path = (tmp / fmt::format("model{}.onnx", m)).string();
            pf::export_onnx(e.onnx_path, file.graph, file.meta);
        }
        e.params = file.graph.total_params();
        e.macs = file.graph.total_macs();
        e.bytes = fs::file_size(e.path);
        // Deployed as exported: BN folded into the convs (as in the ONNX file).
        e.model = std::make_shared<pf::Model>(pf::fold_batch_norm(file.graph), file.meta);
        e.model->eval();
        e.quantized = pf::is_quantized(file.graph);
        if (e.quantized &&
            std::find(runtimes.begin(), runtimes.end(), "libtorch") != runtimes.end()) {
            spdlog::warn(
                "{} is quantized: LibTorch runs its float simulation (fake quantization), not "
                "int8 kernels; time it in ONNX Runtime (--runtime onnxruntime)",
                e.path);
        }
        entries.push_back(std::move(e));
    }
    // Per runtime and batch, every model runs on the same input with their timed runs interleaved
    // (run k of each model, then run k+1): a change in the machine's load hits all of them alike,
    // so the speed-ups against the first model are measured in one run.
    json rows = json::array();
    for (const auto& runtime : runtimes) {
        for (int64_t b : batches) {
            spdlog::info("bench {} models on {} at batch {}", entries.size(), runtime, b);
            at::Tensor x = at::randn({b, shape[0], shape[1], shape[2]});
            std::vector<Timing> timings;
            if (runtime == "libtorch") {
                std::vector<pf::Model*> loaded;
                for (auto& e : entries) {
                    loaded.push_back(e.model.get());
                }
                for (auto& t : pf::time_forward(loaded, x, warmup, repeat)) {
                    timings.push_back(summarize(std::move(t)));
                }
            } else {
                std::vector<std::string> paths;
                for (const auto& e : entries) {
                    paths.push_back(e.onnx_path);
                }
                // Each session is created 5 times (interleaved) for its load time.
                for (const auto& r :
                     pf::run_onnxruntime(paths, x, warmup, repeat, threads, "", 5)) {
                    timings.push_back({r.median_ms, r.p90_ms, r.load_ms});
                }
            }
            for (size_t m = 0; m < entries.size(); ++m) {
                const Entry& e = entries[m];
                const Timing& t = timings[m];
                rows.push_back(
                    {{"model", e.path},
                     {"runtime", runtime},
                     {"batch", b},
                     {"params", e.params},
                     {"macs", e.macs},
                     {"file_bytes", e.bytes},
                     {"median_ms", t.median_ms},
                     {"p90_ms", t.p90_ms},
                     {"images_per_second", 1000.0 * static_cast<double>(b) / t.median_ms},
                     {"speedup", timings[0].median_ms / t.median_ms},
                     {"macs_ratio",
                      static_cast<double>(entries[0].macs) / static_cast<double>(e.macs)},
                     {"int8", e.quantized && runtime == "onnxruntime"},
                     {"simulated", e.quantized && runtime == "libtorch"}});
                if (t.load_ms >= 0) {
                    rows.back()["load_ms"] = t.load_ms;
                }
            }
        }
    }
    if (g.json) {
        std::cout << pf::json_text(json{{"threads", threads},
                                        {"warmup", warmup},
                                        {"repeat", repeat},
                                        {"results", rows}})
                  << std::endl;
        return 0;
    }
    fmt::print("{:<36}{:>10}{:>10}{:>11}{:<13}{:>7}{:>11}{:>11}{:>9}{:>9}{:>9}{:>10}\n", "model",
               "params", "MACs", "bytes", "  runtime", "batch", "median ms", "p90 ms", "speedup",
               "MACs÷", "ratio", "load ms");
    for (const auto& r : rows) {
        std::string name = r["model"].get<std::string>();
        if (name.size() > 35) {
            name = "..." + name.substr(name.size() - 32);
        }
        const double speedup = r["speedup"].get<double>(),
                     macs_ratio = r["macs_ratio"].get<double>();
        fmt::print(
            "{:<36}{:>10}{:>10}{:>11}  "
            "{:<11}{:>7}{:>11.3f}{:>11.3f}{:>8.2f}x{:>8.2f}x{:>9.2f}{:>10}"
            "\n",
            name, pf::human_count(r["params"].get<double>()),
            pf::human_count(r["macs"].get<double>()),
            pf::human_bytes(r["file_bytes"].get<double>()), r["runtime"].get<std::string>(),
            r["batch"].get<int64_t>(), r["median_ms"].get<double>(), r["p90_ms"].get<double>(),
            speedup, macs_ratio, speedup / macs_ratio,
            r.contains("load_ms") ? fmt::format("{:.1f}", r["load_ms"].get<double>())
                                  : std::string("-"));
    }
    fmt::print(
        "({} threads, {} warm-up and {} timed runs per model, interleaved; speed-up and MACs "
        "reduction relative to the first model; ratio = speed-up ÷ MACs reduction)\n",
        threads, warmup, repeat);
    return 0;
}

}  // namespace pocketflow::cli
