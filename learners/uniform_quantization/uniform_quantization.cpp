// SPDX-License-Identifier: Apache-2.0
#include "uniform_quantization.h"

#include <chrono>

#include <ATen/ATen.h>
#include <fnmatch.h>
#include <spdlog/spdlog.h>

#include "pocketflow/cpu.h"
#include "pocketflow/error.h"
#include "pocketflow/sparsity.h"

#include "bits_search.h"

namespace pocketflow::learners {

namespace {

using Clock = std::chrono::steady_clock;

RangeMethod range_method(const std::string& name) {
    return name == "mse"          ? RangeMethod::kMse
           : name == "percentile" ? RangeMethod::kPercentile
                                  : RangeMethod::kMinMax;
}

/// Where a `bits` entry is: the `bits` key's file:line:col (the message names the entry).
std::string where(const ConfigReader& r, const YAML::Node& /*entry*/) {
    return r.location("bits");
}

/// `8` or `{weights: 4, activations: 8}`.
LayerBits read_bits(const ConfigReader& r, const YAML::Node& node, const std::string& key) {
    auto one = [&](const YAML::Node& v, const std::string& k) {
        int b = 0;
        try {
            b = v.as<int>();
        } catch (const YAML::Exception&) {
            b = -1;
        }
        if (b < 2 || b > 8) {
            throw ConfigError(fmt::format("{}: failed to read {} with {}: bits must be 2–8",
                                          where(r, v), k, YAML::Dump(v)));
        }
        return b;
    };
    if (node.IsScalar()) {
        const int b = one(node, key);
        return {b, b};
    }
    if (!node.IsMap()) {
        throw ConfigError(
            fmt::format("{}: failed to read {}: expected bits (2–8) or {{weights: b, activations: "
                        "b}}",
                        where(r, node), key));
    }
    LayerBits out;
    for (const auto& kv : node) {
        const std::string k = kv.first.as<std::string>();
        if (k == "weights") {
            out.weights = one(kv.second, key + ".weights");
        } else if (k == "activations") {
            out.activations = one(kv.second, key + ".activations");
        } else {
            throw ConfigError(fmt::format("{}: unknown key {}.{} (expected weights, activations)",
                                          where(r, kv.first), key, k));
        }
    }
    return out;
}

void read_bits_section(ConfigReader& r, UniformQuantizationOptions& o) {
    if (!r.has("bits")) {
        r.raw("bits", "bits: 8 | {weights, activations} | {default: .., \"glob\": ..}");
        return;
    }
    o.bits_where = r.location("bits");
    YAML::Node node = r.raw("bits", "bits: 8 | {weights, activations} | {default: .., glob: ..}");
    const std::string path = r.key_path("bits");
    if (node.IsScalar() && node.Scalar() == "auto") {
        o.bits_auto = true;  // searched: the `search` section
        return;
    }
    bool plain = !node.IsMap();
    if (node.IsMap()) {
        plain = true;
        for (const auto& kv : node) {
            const std::string k = kv.first.as<std::string>();
            plain = plain && (k == "weights" || k == "activations");
        }
    }
    if (plain) {
        o.default_bits = read_bits(r, node, path);
        return;
    }
    for (const auto& kv : node) {
        const std::string k = kv.first.as<std::string>();
        if (k == "default") {
            o.default_bits = read_bits(r, kv.second, path + ".default");
        } else {
            o.rules.push_back({k, read_bits(r, kv.second, path + "." + k), where(r, kv.first)});
        }
    }
}

}  // namespace

std::map<std::string, bool> edge_layers(const Graph& graph, const std::string& stage_path) {
    const WeightLayers layers = weight_layers(graph);
    PF_CHECK(!layers.names.empty(), InputError,
             "{}: the model has no conv or linear layer to quantize", stage_path);
    std::map<std::string, bool> edge;
    for (size_t k = 0; k < layers.names.size(); ++k) {
        edge[layers.names[k]] = layers.edge[k];
    }
    return edge;
}

std::map<std::string, LayerBits> resolve_layer_bits(const Graph& graph,
                                                    const UniformQuantizationOptions& options,
                                                    const std::string& stage_path) {
    std::vector<std::string> layers;
    std::map<std::string, LayerBits> bits;
    for (const auto& [name, edge] : edge_layers(graph, stage_path)) {
        layers.push_back(name);
        bits[name] = options.keep_first_last && edge ? LayerBits{8, 8} : options.default_bits;
    }
    for (const auto& rule : options.rules) {
        bool matched = false;
        for (const auto& name : layers) {
            if (fnmatch(rule.glob.c_str(), name.c_str(), 0) == 0) {
                bits[name] = rule.bits;
                matched = true;
            }
        }
        PF_CHECK(matched, ConfigError,
                 "{}: failed to read {}.bits.{}: the glob matches no conv or linear layer "
                 "(layers: {})",
                 rule.where, stage_path, rule.glob, fmt::join(layers, ", "));
    }
    return bits;
}

UniformQuantization::UniformQuantization(UniformQuantizationOptions options)
    : options_(std::move(options)) {}

nlohmann::json UniformQuantization::run(RunContext& ctx) {
    const auto start = Clock::now();
    const std::string& path = ctx.stage.path;
    PF_CHECK(!is_quantized(ctx.model->graph()), ConfigError,
             "{}: the model is quantized already (one uniform_quantization stage per pipeline)",
             path);
    for (const auto& n : ctx.model->graph().nodes()) {
        PF_CHECK(!has_codebook(n), ConfigError,
                 "{}: {} has a codebook (nonuniform_quantization); a layer is quantized one way",
                 path, n.name);
    }
    // Quantization is defined on the deployed graph: BatchNorm folded into the convs.
    Graph graph = fold_batch_norm(ctx.model->graph());
    const int64_t bytes_before = ctx.model->graph().weight_bytes();
    const CpuTarget target = cpu_target(options_.target);
    const bool reduced = options_.weight_range == "reduced" ||
                         (options_.weight_range == "auto" && !target.int8_exact);
    QuantizeOptions qo;
    qo.layers = resolve_layer_bits(graph, options_, path);
    qo.per_channel = options_.per_channel;
    qo.qmax_8bit = reduced ? 63 : 127;
    auto calibration = calibration_loader(ctx, options_.calibration_images, 171);
    nlohmann::json search_summary;
    if (options_.bits_auto) {
        std::map<std::string, bool> fixed = edge_layers(graph, path);
        for (auto& [name, edge] : fixed) {
            edge = edge && options_.keep_first_last;
        }
        qo.layers =
            search_bits(ctx, graph, qo, fixed, options_.search, *calibration, search_summary);
    }
    const QuantReport report = prepare_quantization(graph, qo);
    spdlog::info("[{}] {} layers quantized ({}), 8-bit weights within ±{} ({}{})", path,
                 report.layers.size(), options_.mode, qo.qmax_8bit, target.description,
                 options_.weight_range == "auto"
                     ? (reduced ? ": no VNNI, int8 kernels sum pairs in 16 bits" : "")
                     : ", weight_range " + options_.weight_range);
    for (const auto& [node, why] : report.float_nodes) {
        spdlog::info("[{}] {} stays float: {}", path, node, why);
    }
    auto model = std::make_shared<Model>(std::move(graph), ctx.model->meta());
    model->set_range_momentum(options_.range_momentum);
    calibrate_activation_ranges(*model, *calibration, range_method(options_.calibration),
                                options_.percentile, ctx.job.seed);
    double bias_shift = 0;
    if (options_.mode == "ptq" && options_.bias_correction) {
        Model reference(fold_batch_norm(ctx.model->graph()), ctx.model->meta());
        bias_shift = correct_quantized_biases(*model, reference, *calibration);
    }
    const double calibration_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    spdlog::info("[{}] calibrated {} images ({}{}) in {:.1f} s", path, calibration->num_samples(),
                 options_.calibration,
                 options_.mode == "ptq" && options_.bias_correction
                     ? fmt::format(", bias correction: largest shift {:.3g}", bias_shift)
                     : "",
                 calibration_seconds);
    if (options_.mode == "qat" && options_.ranges == "lsq" && options_.epochs > 0) {
        Graph learned = model->graph().clone();
        enable_learned_ranges(learned);  // the step sizes become parameters
        model = std::make_shared<Model>(std::move(learned), ctx.model->meta());
    }
    ctx.model = model;
    nlohmann::json summary = {{"mode", options_.mode},
                              {"calibration", options_.calibration},
                              {"calibration_images", calibration->num_samples()},
                              {"calibration_seconds", calibration_seconds},
                              {"weight_qmax_8bit", qo.qmax_8bit},
                              {"per_channel", options_.per_channel},
                              {"target", target.name}};
    if (options_.mode == "qat") {
        summary["ranges"] = options_.ranges;
        finetune_stage(ctx, options_.epochs, options_.lr, summary);
        Graph trained = ctx.model->graph().clone();
        freeze_learned_ranges(trained);
        ctx.model = std::make_shared<Model>(std::move(trained), ctx.model->meta());
    } else {
        summary["bias_correction"] = options_.bias_correction;
        auto val = ctx.data.val_loader(ctx.job.data);
        if (val && val->num_samples() > 0) {
            summary["val_top1"] = evaluate(*ctx.model, *val).top1;
        }
    }
    snap_quantized_weights(ctx.model->graph());
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [name, b] : qo.layers) {
        layers[name] = fmt::format("w{}a{}", b.weights, b.activations);
    }
    nlohmann::json stay_float = nlohmann::json::object();
    for (const auto& [node, why] : report.float_nodes) {
        stay_float[node] = why;
    }
    summary["bits"] = layers;
    if (!search_summary.is_null()) {
        summary["search"] = search_summary["search"];
    }
    summary["float_nodes"] = stay_float;
    summary["weight_bytes_before"] = bytes_before;
    summary["weight_bytes"] = ctx.model->graph().weight_bytes();
    return summary;
}

void register_uniform_quantization(LearnerRegistry& registry) {
    registry.add(
        {"uniform_quantization",
         "2–8-bit weights and activations (QAT or post-training), int8 QDQ ONNX export",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             UniformQuantizationOptions o;
             ConfigReader r = stage_reader(stage, job);
             r.read("mode", o.mode, "qat (fake-quant training) or ptq (calibration only)",
                    {"qat", "ptq"});
             read_bits_section(r, o);
             r.read("keep_first_last", o.keep_first_last,
                    "first conv and last linear stay 8/8 unless a glob names them");
             r.read("per_channel", o.per_channel, "per-output-channel weight scales");
             r.read("weight_range", o.weight_range,
                    "8-bit weight range: auto (±63 on x86 without VNNI), full, reduced",
                    {"auto", "full", "reduced"});
             std::vector<std::string> targets = cpu_target_names();
             r.read("target", o.target, "CPU the model will run on", targets);
             r.read("calibration", o.calibration, "activation range calibration",
                    {"minmax", "percentile", "mse"});
             r.read("percentile", o.percentile, "percentile calibration: kept percentile",
                    ConfigReader::in_open_range(50, 100));
             r.read("calibration_images", o.calibration_images, "training images for calibration",
                    ConfigReader::in_range(1, 1000000));
             r.read("bias_correction", o.bias_correction, "ptq: empirical bias correction");
             r.read("epochs", o.epochs, "qat: training epochs (0: calibration only)",
                    ConfigReader::at_least(0));
             r.read("lr", o.lr, "qat: learning rate", ConfigReader::in_open_range(0, 10));
             r.read("range_momentum", o.range_momentum,
                    "qat: batch weight of the activation-range average",
                    ConfigReader::in_open_range(0, 1));
             r.read("ranges", o.ranges,
                    "qat: activation ranges by moving average (ema) or learned step sizes (lsq)",
                    {"ema", "lsq"});
             r.section("search", "bits: auto (DDPG search of weight bits)", [&](ConfigReader& s) {
                 BitsSearchOptions& so = o.search;
                 read_bits_budget(
                     s, so.budget,
                     "budget: mean weight bits of the searched layers (by parameters)");
                 s.read("activations", so.activations, "activation bits of searched layers",
                        ConfigReader::in_range(2, 8));
                 read_search_keys(s, so.episodes, so.warmup, so.eval_images);
             });
             if (r.has("search") && !o.bits_auto) {
                 r.fail("search", "the search section goes with bits: auto");
             }
             r.finish();
             return std::make_unique<UniformQuantization>(o);
         }});
}

}  // namespace pocketflow::learners
