// SPDX-License-Identifier: Apache-2.0
// `sparsity: auto`: the weight-sparsification search space for the DDPG search (src/search/).
#include "sparsity_search.h"

#include <chrono>
#include <filesystem>

#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/search.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

std::vector<double> search_sparsities(RunContext& ctx,
                                      const Graph& graph,
                                      const std::vector<int>& nodes,
                                      const SparsitySearchOptions& options,
                                      nlohmann::json& summary) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& where = ctx.stage.path;
    std::vector<int64_t> sizes;
    std::vector<double> params;
    double total = 0, largest = 0;
    int64_t widest = 1;
    for (int i : nodes) {
        const at::Tensor& w = graph.nodes()[static_cast<size_t>(i)].params.at("weight");
        sizes.push_back(w.numel());
        params.push_back(static_cast<double>(w.numel()));
        total += params.back();
        largest = std::max(largest, params.back());
        widest = std::max<int64_t>(widest, w.size(0));
    }
    PF_CHECK(options.target <= options.max_sparsity, ConfigError,
             "{}: search.target {} exceeds search.max_sparsity {}", where, options.target,
             options.max_sparsity);
    const double kept_budget = (1.0 - options.target) * total;
    SearchSpace space;
    space.lo = 1.0 - options.max_sparsity;  // actions are kept fractions
    space.hi = 1.0;
    for (int i : nodes) {
        space.features.push_back(
            weight_layer_features(graph.nodes()[static_cast<size_t>(i)], largest, widest));
    }
    // The agent chooses relative kept fractions; every policy is then scaled onto the budget
    // (kept_l = clamp(c · a_l, lo, 1), c by bisection), as PocketFlow's RL sparsity did. Clipping
    // each action to what the budget still allows (AMC's rule, the channel search's) lets the
    // small early layers take the budget and leaves the large late ones at the floor: on LeNet-5
    // at 90% no episode of 150 came near the log_size allocation that way.
    auto to_budget = [&](const std::vector<double>& a) {
        auto kept_at = [&](double c) {
            double kept = 0;
            for (size_t i = 0; i < params.size(); ++i) {
                kept += params[i] * std::clamp(c * a[i], space.lo, 1.0);
            }
            return kept;
        };
        double lo = 0, hi = 1;
        while (kept_at(hi) < kept_budget && hi < 1e9) {
            hi *= 2;
        }
        for (int it = 0; it < 60; ++it) {
            const double mid = 0.5 * (lo + hi);
            (kept_at(mid) < kept_budget ? lo : hi) = mid;
        }
        std::vector<double> out;
        for (double x : a) {
            out.push_back(std::clamp(lo * x, space.lo, 1.0));
        }
        return out;
    };
    space.cost = [&](const std::vector<double>& a) {
        std::vector<double> full = a;
        full.resize(params.size(), space.lo);
        const std::vector<double> kept = to_budget(full);
        double sum = 0;
        for (size_t i = 0; i < params.size(); ++i) {
            sum += params[i] * kept[i];
        }
        return sum / total;
    };
    space.max_action = [&](size_t, const std::vector<double>&) { return space.hi; };
    auto val_loader = search_validation_loader(ctx, options.eval_images, where);
    std::unique_ptr<Loader> bn_loader;
    if (options.bn_batches > 0) {
        bn_loader = calibration_loader(ctx, options.bn_batches * ctx.job.data.batch_size, 191,
                                       ctx.job.data.batch_size);
    }
    auto score = [&](const std::vector<double>& kept) {
        Graph g = graph.clone();
        for (size_t k = 0; k < nodes.size(); ++k) {
            set_magnitude_mask(g.nodes()[static_cast<size_t>(nodes[k])],
                               std::clamp(1.0 - kept[k], 0.0, options.max_sparsity));
        }
        Model m(std::move(g), ctx.model->meta());
        if (bn_loader) {
            reestimate_bn(m, *bn_loader);
        }
        m.eval();
        return evaluate(m, *val_loader).top1;
    };
    space.reward = [&](const std::vector<double>& a) {
        return SearchSpace::Score(score(to_budget(a)), {});
    };

    std::vector<double> heuristic =
        log_size_sparsities(sizes, options.target, options.max_sparsity);
    std::vector<double> baseline;
    for (double s : heuristic) {
        baseline.push_back(1.0 - s);
    }
    const double baseline_top1 = score(to_budget(baseline));
    spdlog::info(
        "[{}] sparsity search: {} layers, {:.1f}% of their weights pruned, {} episodes ({} "
        "warm-up); log_size allocation: validation top-1 {:.2f}% on {} images (no fine-tuning)",
        where, nodes.size(), 100 * options.target, options.episodes, options.warmup, baseline_top1,
        val_loader->num_samples());
    const SearchResult result =
        run_stage_search(ctx, space, options.episodes, options.warmup, 13, "sparsity search",
                         baseline, baseline_top1, "log_size");
    std::vector<double> chosen;
    nlohmann::json layers = nlohmann::json::object();
    std::string yaml = fmt::format(
        "# sparsity: auto found these (validation top-1 {:.2f}% before fine-tuning, log_size "
        "{:.2f}%; {:.2f}% of the weights pruned)\nsparsity:\n",
        result.best_reward, baseline_top1, 100 * (1.0 - space.cost(result.best)));
    const std::vector<double> best = to_budget(result.best);
    for (size_t k = 0; k < nodes.size(); ++k) {
        const double s = std::clamp(1.0 - best[k], 0.0, options.max_sparsity);
        chosen.push_back(s);
        const std::string& name = graph.nodes()[static_cast<size_t>(nodes[k])].name;
        layers[name] = s;
        yaml += fmt::format("  \"{}\": {:.4f}\n", name, s);
    }
    const std::filesystem::path dir = search_dir(ctx);  // made by stage_search_options
    write_file_atomic(dir / "best_sparsity.yaml", yaml);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    summary["search"] = {{"episodes", result.episodes},
                         {"best_val_top1", result.best_reward},
                         {"log_size_val_top1", baseline_top1},
                         {"target", options.target},
                         {"sparsity", 1.0 - space.cost(result.best)},
                         {"layers", layers},
                         {"val_images", val_loader->num_samples()},
                         {"seconds", seconds},
                         {"resumed_episodes", result.resumed},
                         {"chosen", result.baseline_kept ? "log_size" : "search"},
                         {"agent_best_val_top1", result.agent_best_reward}};
    spdlog::info(
        "[{}] sparsity search done in {:.0f} s: best validation top-1 {:.2f}% (log_size "
        "{:.2f}%) before fine-tuning; {}",
        where, seconds, result.best_reward, baseline_top1, (dir / "best_sparsity.yaml").string());
    return chosen;
}

}  // namespace pocketflow::learners
