// SPDX-License-Identifier: Apache-2.0
#include "weight_sparsification.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

namespace {

/// The sparsified layers (graph indices) and their final sparsities.
struct Plan {
    std::vector<int> nodes;
    std::vector<std::string> names;
    std::vector<double> targets;  ///< empty with allocation: global (decided on each update)
};

Plan make_plan(const Graph& graph, const WeightSparsificationOptions& o, const std::string& path) {
    const WeightLayers layers = weight_layers(graph);
    PF_CHECK(!layers.names.empty(), InputError, "{}: the model has no conv or linear layer", path);
    const auto named = resolve_per_layer(o.sparsity, layers.names);
    Plan plan;
    const bool nm = o.nm_m > 0;
    for (size_t k = 0; k < layers.names.size(); ++k) {
        const Node& n = graph.nodes()[static_cast<size_t>(graph.find(layers.names[k]))];
        double s = 0;
        if (named[k]) {
            s = *named[k];
        } else if (!(o.keep_first_last && layers.edge[k])) {
            s = nm ? 1.0 - double(o.nm_n) / o.nm_m : o.sparsity.value;
        }
        if (s <= 0) {
            continue;
        }
        if (nm && !nm_applicable(n, o.nm_m)) {
            spdlog::info("[{}] {} stays dense: {} input channels are not groups of {}", path,
                         n.name, n.params.at("weight").size(1), o.nm_m);
            continue;
        }
        plan.nodes.push_back(graph.find(layers.names[k]));
        plan.names.push_back(layers.names[k]);
        plan.targets.push_back(s);
    }
    PF_CHECK(!plan.nodes.empty(), ConfigError, "{}: no layer to sparsify (layers: {})", path,
             join(layers.names, ", "));
    const bool one_number = o.sparsity.has_value && o.sparsity.rules.empty() && !nm;
    if (one_number && o.allocation == "log_size") {
        std::vector<int64_t> sizes;
        for (int i : plan.nodes) {
            sizes.push_back(graph.nodes()[static_cast<size_t>(i)].params.at("weight").numel());
        }
        plan.targets = log_size_sparsities(sizes, o.sparsity.value);
    } else if (one_number && o.allocation == "global") {
        plan.targets.clear();
    }
    return plan;
}

/// Sets the masks of `plan`'s layers for overall schedule value `fraction` of the final targets
/// (0–1 of the way, as the schedule gives it).
void update_masks(Graph& graph,
                  const Plan& plan,
                  const WeightSparsificationOptions& o,
                  double sparsity_now,
                  double final_sparsity) {
    const double share = final_sparsity > 0 ? sparsity_now / final_sparsity : 0.0;
    std::vector<double> per_layer = plan.targets;
    if (per_layer.empty()) {  // global: one magnitude threshold over all layers
        std::vector<at::Tensor> weights;
        for (int i : plan.nodes) {
            weights.push_back(graph.nodes()[static_cast<size_t>(i)].params.at("weight"));
        }
        per_layer = global_magnitude_sparsities(weights, sparsity_now);
    } else {
        for (double& s : per_layer) {
            s *= share;
        }
    }
    for (size_t k = 0; k < plan.nodes.size(); ++k) {
        Node& n = graph.nodes()[static_cast<size_t>(plan.nodes[k])];
        if (o.nm_m > 0) {
            set_nm_mask(n, o.nm_n, o.nm_m);
        } else {
            set_magnitude_mask(n, std::min(per_layer[k], 0.999999));
        }
    }
}

}  // namespace

WeightSparsification::WeightSparsification(WeightSparsificationOptions options)
    : options_(std::move(options)) {}

nlohmann::json WeightSparsification::run(RunContext& ctx) {
    const std::string& path = ctx.stage.path;
    const WeightSparsificationOptions& o = options_;
    Graph graph = ctx.model->graph().clone();
    const int64_t bytes_before = graph.weight_bytes();
    const double top_before = count_sparsity(graph).sparsity();
    Plan plan = make_plan(graph, o, path);
    nlohmann::json search_summary;
    if (o.sparsity.is_auto) {
        plan.targets = search_sparsities(ctx, graph, plan.nodes, o.search, search_summary);
    }
    // Every sparsified layer gets its mask now (all true), so the Model registers it and
    // checkpoints carry it; the schedule then tightens it in place.
    for (int i : plan.nodes) {
        Node& n = graph.nodes()[static_cast<size_t>(i)];
        if (!has_mask(n)) {
            n.buffers["weight_mask"] = at::ones(n.params.at("weight").sizes(), at::kBool);
        }
    }
    ctx.model = std::make_shared<Model>(std::move(graph), ctx.model->meta());
    // The final sparsity of the sparsified layers (what the schedule's s_f is).
    double weights = 0, pruned = 0;
    for (size_t k = 0; k < plan.nodes.size(); ++k) {
        const double n = static_cast<double>(ctx.model->graph()
                                                 .nodes()[static_cast<size_t>(plan.nodes[k])]
                                                 .params.at("weight")
                                                 .numel());
        weights += n;
        pruned += n * (plan.targets.empty() ? o.sparsity.value : plan.targets[k]);
    }
    const double final_sparsity = weights > 0 ? pruned / weights : 0.0;
    nlohmann::json summary = {
        {"pattern", o.pattern},
        {"allocation", o.nm_m > 0 ? "n:m" : (o.sparsity.is_auto ? "auto" : o.allocation)},
        {"target_sparsity", final_sparsity}};
    if (!search_summary.is_null()) {
        summary["search"] = search_summary["search"];
    }
    const int64_t per_epoch = o.epochs > 0 ? steps_per_epoch(ctx) : 0;
    const int64_t total = per_epoch * o.epochs;
    // Steps are counted completed (1..total): the final masks come at step `end` >= 1 even when
    // end·total rounds to 0.
    const int64_t end = std::max<int64_t>(
        1, static_cast<int64_t>(std::llround(o.end * static_cast<double>(total))));
    const int64_t begin =
        std::min(end, static_cast<int64_t>(std::llround(o.begin * static_cast<double>(total))));
    if (o.epochs == 0) {
        update_masks(ctx.model->graph(), plan, o, final_sparsity, final_sparsity);
        spdlog::info("[{}] {} layers pruned to {:.1f}% at once (epochs: 0)", path,
                     plan.nodes.size(), 100 * final_sparsity);
    } else {
        spdlog::info(
            "[{}] {} layers to {:.1f}% sparsity: steps {}–{} of {}, masks every {} steps "
            "(alpha {})",
            path, plan.nodes.size(), 100 * final_sparsity, begin, end, total, o.frequency, o.alpha);
        summary["schedule"] = {{"begin_step", begin},
                               {"end_step", end},
                               {"total_steps", total},
                               {"frequency", o.frequency},
                               {"alpha", o.alpha}};
        auto hook = [&, plan](Model& model, int64_t step) {
            const int64_t t = step + 1;  // steps completed
            if (o.nm_m > 0) {
                if (t != std::max<int64_t>(begin, 1)) {
                    return;  // N:M: set once at `begin`, then kept
                }
            } else if (t < begin || t > end || ((t - begin) % o.frequency != 0 && t != end)) {
                return;
            }
            const double s = o.nm_m > 0
                                 ? final_sparsity
                                 : scheduled_sparsity(final_sparsity, t, begin, end, o.alpha);
            update_masks(model.graph(), plan, o, s, final_sparsity);
            spdlog::debug("[{}] step {}: sparsity {:.2f}%", path, t, 100 * s);
        };
        finetune_stage(ctx, o.epochs, o.lr, summary,
                       [&](Trainer& trainer) { trainer.add_after_step(hook); });
    }
    Graph& g = ctx.model->graph();
    nlohmann::json layers = nlohmann::json::object();
    for (size_t k = 0; k < plan.nodes.size(); ++k) {
        layers[plan.names[k]] =
            count_sparsity(g.nodes()[static_cast<size_t>(plan.nodes[k])]).sparsity();
    }
    const SparsityCount all = count_sparsity(g);
    const int64_t bytes = g.weight_bytes();
    summary["layers"] = layers;
    summary["sparsity"] = all.sparsity();
    summary["sparsity_before"] = top_before;
    summary["weight_bytes_before"] = bytes_before;
    summary["weight_bytes"] = bytes;
    summary["compression"] = static_cast<double>(bytes_before) / static_cast<double>(bytes);
    spdlog::info(
        "[{}] {:.1f}% of the conv/linear weights are zero; weights {} -> {} bytes ({:.2f}x)", path,
        100 * all.sparsity(), bytes_before, bytes,
        static_cast<double>(bytes_before) / static_cast<double>(bytes));
    return summary;
}

void register_weight_sparsification(LearnerRegistry& registry) {
    registry.add(
        {"weight_sparsification",
         "unstructured magnitude pruning (Zhu-Gupta schedule) or N:M sparsity; compact .pfm",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             WeightSparsificationOptions o;
             ConfigReader r = stage_reader(stage, job);
             o.sparsity = read_per_layer(
                 r, "sparsity", "final sparsity: 0.8, per layer or a list",
                 [](double v) {
                     return v >= 0 && v < 1 ? std::string()
                                            : std::string(
                                                  "sparsity must lie in "
                                                  "[0, 1)");
                 },
                 /*allow_auto=*/true);
             r.read("allocation", o.allocation,
                    "one sparsity for all layers: uniform, log_size (larger layers more) or global "
                    "(one magnitude threshold)",
                    {"uniform", "log_size", "global"});
             r.read("pattern", o.pattern, "unstructured, or N:M structured (e.g. 2:4)");
             if (o.pattern != "unstructured") {
                 int n = 0, m = 0;
                 char sep = 0;
                 if (std::sscanf(o.pattern.c_str(), "%d%c%d", &n, &sep, &m) != 3 || sep != ':' ||
                     n < 1 || m < 2 || n >= m || m > 64) {
                     r.fail("pattern", "expected unstructured or N:M with 1 <= N < M <= 64 (2:4)");
                 }
                 o.nm_n = n;
                 o.nm_m = m;
             }
             r.read("begin", o.begin, "schedule start, fraction of the stage's training steps",
                    ConfigReader::in_range(0, 1));
             r.read("end", o.end, "schedule end, fraction of the stage's training steps",
                    ConfigReader::in_range(0, 1));
             r.read("frequency", o.frequency, "training steps between mask updates",
                    ConfigReader::at_least(1));
             r.read("alpha", o.alpha, "schedule exponent (3: Zhu & Gupta)",
                    ConfigReader::in_open_range(0, 100));
             r.read("epochs", o.epochs, "training epochs (0: prune at once)",
                    ConfigReader::at_least(0));
             r.read("lr", o.lr, "learning rate", ConfigReader::in_open_range(0, 10));
             r.read("keep_first_last", o.keep_first_last,
                    "first conv and last linear stay dense unless a glob names them");
             r.section("search", "sparsity: auto (DDPG search of per-layer sparsities)",
                       [&](ConfigReader& s) {
                           SparsitySearchOptions& so = o.search;
                           s.read("target", so.target,
                                  "budget: fraction of the searched layers' weights pruned",
                                  ConfigReader::in_range(0, 0.99));
                           s.read("max_sparsity", so.max_sparsity, "most sparsity of a layer",
                                  ConfigReader::in_range(0, 0.999));
                           s.read("bn_batches", so.bn_batches,
                                  "batches to re-estimate BN on per candidate (0: none)",
                                  ConfigReader::in_range(0, 1000));
                           read_search_keys(s, so.episodes, so.warmup, so.eval_images);
                           if (so.target > so.max_sparsity) {
                               s.fail("target",
                                      fmt::format("exceeds max_sparsity {}", so.max_sparsity));
                           }
                       });
             if (r.has("search") != o.sparsity.is_auto) {
                 r.fail(o.sparsity.is_auto ? "sparsity" : "search",
                        "sparsity: auto and a search: section (with its target) go together");
             }
             if (o.sparsity.is_auto) {
                 o.sparsity.value = o.search.target;  // every eligible layer is searched
                 o.sparsity.has_value = true;
             }
             if (o.end < o.begin) {
                 r.fail("end",
                        fmt::format("the schedule ends before it begins (begin {})", o.begin));
             }
             if (o.nm_m > 0 && o.sparsity.is_auto) {
                 r.fail("sparsity", "auto goes with unstructured sparsity");
             }
             if (o.nm_m == 0 && !o.sparsity.given) {
                 r.fail("sparsity", "required (e.g. sparsity: 0.8)");
             }
             if (o.nm_m > 0 && o.sparsity.given) {
                 r.fail("sparsity", fmt::format("pattern {} fixes the sparsity at {}", o.pattern,
                                                1.0 - double(o.nm_n) / o.nm_m));
             }
             if (o.nm_m == 0 && !o.sparsity.has_value && o.sparsity.list.empty()) {
                 // A map without default: unnamed layers stay dense.
                 o.sparsity.value = 0;
             }
             if (r.has("allocation") &&
                 (o.sparsity.is_auto || !(o.sparsity.has_value && o.sparsity.rules.empty()))) {
                 r.fail("allocation", "goes with one sparsity for all layers");
             }
             r.finish();
             return std::make_unique<WeightSparsification>(o);
         }});
}

}  // namespace pocketflow::learners
