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
    BitsSearchSpec spec;
    spec.budget = options.budget;
    spec.budget.weights = clustered;
    const BitsBudget& budget = spec.budget;
    SearchSpace space;
    for (int i : nodes) {
        space.features.push_back(
            weight_layer_features(graph.nodes()[static_cast<size_t>(i)], largest, widest));
        spec.layers.push_back(graph.nodes()[static_cast<size_t>(i)].name);
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
            key.push_back(budget.bits_of(x));
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

    spec.episodes = options.episodes;
    spec.warmup = options.warmup;
    spec.salt = 17;
    spec.val_images = val_loader->num_samples();
    spec.what = "codebook bits search";
    spec.unit = "index";
    spec.layers_key = "bits";
    spec.yaml_value = [](int bits) { return std::to_string(bits); };
    BitsSearchResult found = run_bits_search(ctx, space, spec, start);
    summary["search"] = std::move(found.summary);
    return found.bits;
}

}  // namespace pocketflow::learners
