// SPDX-License-Identifier: Apache-2.0
// `bits: auto`: the codebook-width search space for the DDPG search (src/search/).
#include "codebook_search.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>

#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/search.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

std::vector<int> search_codebook_bits(RunContext& ctx,
                                      const Graph& graph,
                                      const std::vector<int>& nodes,
                                      CodebookInit init,
                                      int kmeans_iterations,
                                      const CodebookSearchOptions& options,
                                      nlohmann::json& summary) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& where = ctx.stage.path;
    // The budget counts the weights each layer clusters: its non-zeros.
    std::vector<double> clustered;
    double largest = 0;
    int64_t widest = 1;
    for (int i : nodes) {
        const Node& n = graph.nodes()[static_cast<size_t>(i)];
        const SparsityCount c = count_sparsity(n);
        clustered.push_back(static_cast<double>(has_mask(n) ? c.weights - c.zeros : c.weights));
        largest = std::max(largest, static_cast<double>(c.weights));
        widest = std::max<int64_t>(widest, n.params.at("weight").size(0));
    }
    BitsBudget budget = options.budget;
    budget.weights = clustered;
    auto bits_of = [&](double a) { return budget.bits_of(a); };
    SearchSpace space;
    budget.describe(space);
    for (int i : nodes) {
        space.features.push_back(
            weight_layer_features(graph.nodes()[static_cast<size_t>(i)], largest, widest));
    }
    // Each layer's decoded weight at each width, clustered once.
    std::map<std::pair<size_t, int>, at::Tensor> decoded;
    auto weight_at = [&](size_t k, int bits) {
        auto key = std::make_pair(k, bits);
        auto it = decoded.find(key);
        if (it == decoded.end()) {
            Node n = graph.nodes()[static_cast<size_t>(nodes[k])];
            n.params["weight"] = n.params.at("weight").detach().clone();
            set_codebook(n, bits, init, kmeans_iterations, ctx.job.seed + k);
            it = decoded.emplace(key, n.params.at("weight")).first;
        }
        return it->second;
    };
    auto val_loader = search_validation_loader(ctx, options.eval_images, where);
    std::map<std::vector<int>, double> scored;
    auto score = [&](const std::vector<double>& a) {
        std::vector<int> key;
        for (double x : a) {
            key.push_back(bits_of(x));
        }
        if (auto it = scored.find(key); it != scored.end()) {
            return it->second;
        }
        Graph g = graph.clone();
        for (size_t k = 0; k < nodes.size(); ++k) {
            g.nodes()[static_cast<size_t>(nodes[k])].params["weight"] =
                weight_at(k, key[k]).clone();
        }
        Model m(std::move(g), ctx.model->meta());
        const double top1 = evaluate(m, *val_loader).top1;
        scored.emplace(std::move(key), top1);
        return top1;
    };
    space.reward = [&](const std::vector<double>& a) { return SearchSpace::Score(score(a), {}); };

    const int uniform_bits = static_cast<int>(std::floor(budget.avg_bits));
    const std::vector<double> uniform(nodes.size(), static_cast<double>(uniform_bits));
    const double uniform_top1 = score(uniform);
    spdlog::info(
        "[{}] codebook bits search: {} layers, mean {} index bits, {} episodes ({} warm-up); "
        "uniform {} bits: validation top-1 {:.2f}% on {} images",
        where, nodes.size(), budget.avg_bits, options.episodes, options.warmup, uniform_bits,
        uniform_top1, val_loader->num_samples());
    const SearchResult result =
        run_stage_search(ctx, space, options.episodes, options.warmup, 17, "codebook bits search",
                         uniform, uniform_top1, fmt::format("uniform {} bits", uniform_bits));
    std::vector<int> chosen;
    nlohmann::json layers = nlohmann::json::object();
    std::string yaml = fmt::format(
        "# bits: auto found these (validation top-1 {:.2f}% before fine-tuning, uniform {} bits "
        "{:.2f}%; mean index bits {:.3f})\nbits:\n",
        result.best_reward, uniform_bits, uniform_top1, budget.mean_bits(result.best));
    for (size_t k = 0; k < nodes.size(); ++k) {
        chosen.push_back(bits_of(result.best[k]));
        const std::string& name = graph.nodes()[static_cast<size_t>(nodes[k])].name;
        layers[name] = chosen.back();
        yaml += fmt::format("  \"{}\": {}\n", name, chosen.back());
    }
    const std::filesystem::path dir = ctx.run.path() / "search";  // made by stage_search_options
    write_file_atomic(dir / "best_bits.yaml", yaml);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    summary["search"] = {{"episodes", result.episodes},
                         {"best_val_top1", result.best_reward},
                         {"uniform_val_top1", uniform_top1},
                         {"uniform_bits", uniform_bits},
                         {"avg_bits_target", budget.avg_bits},
                         {"avg_bits", budget.mean_bits(result.best)},
                         {"bits", layers},
                         {"val_images", val_loader->num_samples()},
                         {"seconds", seconds},
                         {"resumed_episodes", result.resumed},
                         {"chosen", result.baseline_kept ? "uniform" : "search"},
                         {"agent_best_val_top1", result.agent_best_reward}};
    spdlog::info(
        "[{}] codebook bits search done in {:.0f} s: best validation top-1 {:.2f}% "
        "(uniform {} bits {:.2f}%) at a mean of {:.3f} index bits; {}",
        where, seconds, result.best_reward, uniform_bits, uniform_top1,
        budget.mean_bits(result.best), (dir / "best_bits.yaml").string());
    return chosen;
}

}  // namespace pocketflow::learners
