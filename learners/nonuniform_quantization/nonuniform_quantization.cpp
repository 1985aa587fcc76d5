// SPDX-License-Identifier: Apache-2.0
#include "nonuniform_quantization.h"

#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>

#include "pocketflow/codebook.h"
#include "pocketflow/error.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

NonuniformQuantization::NonuniformQuantization(NonuniformQuantizationOptions options)
    : options_(std::move(options)) {}

nlohmann::json NonuniformQuantization::run(RunContext& ctx) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& path = ctx.stage.path;
    const NonuniformQuantizationOptions& o = options_;
    PF_CHECK(!is_quantized(ctx.model->graph()), ConfigError,
             "{}: the model is uniformly quantized already; codebooks replace float weights", path);
    const int64_t bytes_before = ctx.model->graph().weight_bytes();
    Graph graph = o.fold_bn ? fold_batch_norm(ctx.model->graph()) : ctx.model->graph().clone();
    const WeightLayers layers = weight_layers(graph);
    PF_CHECK(!layers.names.empty(), InputError, "{}: the model has no conv or linear layer", path);
    const auto named = resolve_per_layer(o.bits, layers.names);
    const CodebookInit init = codebook_init_from_name(o.init);
    // Each layer's bits: named, the default, or searched (bits: auto).
    std::vector<int> layer_bits(layers.names.size(), 0);
    std::vector<int> searched;
    for (size_t k = 0; k < layers.names.size(); ++k) {
        if (named[k]) {
            layer_bits[k] = static_cast<int>(*named[k]);
        } else if (!(o.keep_first_last && layers.edge[k]) && (o.bits.has_value || o.bits.is_auto)) {
            layer_bits[k] = o.bits.is_auto ? -1 : static_cast<int>(o.bits.value);
            if (o.bits.is_auto) {
                searched.push_back(graph.find(layers.names[k]));
            }
        }
    }
    nlohmann::json search_summary;
    if (!searched.empty()) {
        const std::vector<int> found = search_codebook_bits(
            ctx, graph, searched, init, o.kmeans_iterations, o.search, search_summary);
        size_t next = 0;
        for (int& b : layer_bits) {
            b = b < 0 ? found[next++] : b;
        }
    }
    nlohmann::json per_layer = nlohmann::json::object();
    int64_t coded = 0;
    for (size_t k = 0; k < layers.names.size(); ++k) {
        const int bits = layer_bits[k];
        if (bits == 0) {
            continue;
        }
        Node& n = graph.nodes()[static_cast<size_t>(graph.find(layers.names[k]))];
        PF_CHECK(!has_codebook(n), ConfigError, "{}: {} has a codebook already", path, n.name);
        const CodebookReport r = set_codebook(n, bits, init, o.kmeans_iterations, ctx.job.seed + k);
        per_layer[n.name] = {{"bits", bits},
                             {"weights", r.clustered},
                             {"kmeans_iterations", r.iterations},
                             {"mse", r.mse}};
        spdlog::debug("[{}] {}: {} weights -> {} centroids, {} k-means rounds, mse {:.3g}", path,
                      n.name, r.clustered, int64_t{1} << bits, r.iterations, r.mse);
        ++coded;
    }
    PF_CHECK(coded > 0, ConfigError, "{}: no layer gets a codebook (layers: {})", path,
             join(layers.names, ", "));
    ctx.model = std::make_shared<Model>(std::move(graph), ctx.model->meta());
    const double cluster_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    nlohmann::json summary = {
        {"init", o.init}, {"fold_bn", o.fold_bn}, {"cluster_seconds", cluster_seconds}};
    if (!search_summary.is_null()) {
        summary["search"] = search_summary["search"];
    }
    auto val = ctx.data.val_loader(ctx.job.data);
    if (val && val->num_samples() > 0) {
        summary["val_top1_clustered"] = evaluate(*ctx.model, *val).top1;
    }
    spdlog::info("[{}] {} layers clustered ({} init) in {:.1f} s{}", path, coded, o.init,
                 cluster_seconds,
                 summary.contains("val_top1_clustered")
                     ? fmt::format(": val top-1 {:.2f}% before fine-tuning",
                                   summary["val_top1_clustered"].get<double>())
                     : "");
    finetune_stage(ctx, o.epochs, o.lr, summary);
    const int64_t bytes = ctx.model->graph().weight_bytes();
    summary["layers"] = per_layer;
    summary["weight_bytes_before"] = bytes_before;
    summary["weight_bytes"] = bytes;
    summary["compression"] = static_cast<double>(bytes_before) / static_cast<double>(bytes);
    spdlog::info("[{}] weights {} -> {} bytes ({:.2f}x)", path, bytes_before, bytes,
                 static_cast<double>(bytes_before) / static_cast<double>(bytes));
    return summary;
}

void register_nonuniform_quantization(LearnerRegistry& registry) {
    registry.add(
        {"nonuniform_quantization",
         "per-layer k-means codebooks (Deep Compression) with centroid fine-tuning",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             NonuniformQuantizationOptions o;
             ConfigReader r = stage_reader(stage, job);
             o.bits = read_per_layer(
                 r, "bits", "codebook bits: 4, per layer or a list",
                 [](double v) {
                     return v >= 2 && v <= 8 && v == std::floor(v)
                                ? std::string()
                                : std::string("bits must be an integer 2–8");
                 },
                 /*allow_auto=*/true);
             if (!o.bits.given) {
                 o.bits.has_value = true;
                 o.bits.value = 4;
             }
             r.read("init", o.init, "centroid initialisation before k-means",
                    {"quantile", "linear", "kmeans++"});
             r.read("kmeans_iterations", o.kmeans_iterations, "k-means rounds at most",
                    ConfigReader::in_range(0, 10000));
             r.read("epochs", o.epochs, "centroid fine-tuning epochs (0: none)",
                    ConfigReader::at_least(0));
             r.read("lr", o.lr, "centroid fine-tuning learning rate",
                    ConfigReader::in_open_range(0, 10));
             r.read("keep_first_last", o.keep_first_last,
                    "first conv and last linear stay float unless a glob names them");
             r.read("fold_bn", o.fold_bn, "fold BatchNorm into the convs before clustering");
             r.section("search", "bits: auto (DDPG search of per-layer codebook bits)",
                       [&](ConfigReader& s) {
                           CodebookSearchOptions& so = o.search;
                           read_bits_budget(s, so.budget,
                                            "budget: mean index bits over the clustered weights");
                           read_search_keys(s, so.episodes, so.warmup, so.eval_images);
                       });
             if (r.has("search") != o.bits.is_auto) {
                 r.fail(o.bits.is_auto ? "bits" : "search",
                        "bits: auto and a search: section go together");
             }
             r.finish();
             return std::make_unique<NonuniformQuantization>(o);
         }});
}

}  // namespace pocketflow::learners
