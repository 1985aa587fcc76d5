// SPDX-License-Identifier: Apache-2.0
// `bits: auto`: the uniform-quantization search space for the DDPG search (src/search/).
#include "bits_search.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/search.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

std::map<std::string, LayerBits> search_bits(RunContext& ctx,
                                             const Graph& graph,
                                             const QuantizeOptions& base,
                                             const std::map<std::string, bool>& fixed,
                                             const BitsSearchOptions& options,
                                             Loader& calibration,
                                             nlohmann::json& summary) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& where = ctx.stage.path;
    // The searched layers, in graph order, and their weights' sizes.
    std::vector<std::string> names;
    std::vector<double> params;
    int64_t widest = 1;
    for (const Node& n : graph.nodes()) {
        if (base.layers.count(n.name) && !fixed.at(n.name)) {
            names.push_back(n.name);
            params.push_back(static_cast<double>(n.params.at("weight").numel()));
            widest = std::max<int64_t>(widest, n.params.at("weight").size(0));
        }
    }
    PF_CHECK(!names.empty(), ConfigError,
             "{}: bits: auto has no layer to search (the first and last layers stay at 8 bits "
             "with keep_first_last)",
             where);
    BitsSearchSpec spec;
    spec.layers = names;
    spec.budget = options.budget;
    spec.budget.weights = params;
    const BitsBudget& budget = spec.budget;
    auto bits_of = [&](double a) { return budget.bits_of(a); };
    auto with_bits = [&](const std::vector<double>& actions) {
        QuantizeOptions q = base;
        for (size_t i = 0; i < names.size(); ++i) {
            q.layers[names[i]] = {bits_of(actions[i]), options.activations};
        }
        return q;
    };

    // Activation ranges: calibrated once, with the searched layers' weights at max_bits.
    Graph reference = graph.clone();
    prepare_quantization(reference, with_bits(std::vector<double>(names.size(), budget.max_bits)));
    Model reference_model(std::move(reference), ctx.model->meta());
    calibrate_activation_ranges(reference_model, calibration, RangeMethod::kMse, 99.99,
                                ctx.job.seed);
    auto val_loader = search_validation_loader(ctx, options.eval_images, where);
    std::map<std::vector<int>, double> scored;  // bits → top-1 (integer bits repeat)
    auto score = [&](const std::vector<double>& actions) {
        std::vector<int> key;
        for (double a : actions) {
            key.push_back(bits_of(a));
        }
        if (auto it = scored.find(key); it != scored.end()) {
            return it->second;
        }
        Graph g = graph.clone();
        prepare_quantization(g, with_bits(actions));
        const auto& ref_nodes = reference_model.graph().nodes();
        for (size_t i = 0; i < g.nodes().size(); ++i) {
            auto it = ref_nodes[i].buffers.find("act_range");
            if (it != ref_nodes[i].buffers.end() && g.nodes()[i].buffers.count("act_range")) {
                g.nodes()[i].buffers["act_range"] = it->second.clone();
            }
        }
        Model m(std::move(g), ctx.model->meta());
        const double top1 = evaluate(m, *val_loader).top1;
        scored.emplace(std::move(key), top1);
        return top1;
    };

    SearchSpace space;
    double largest = 0;
    for (double p : params) {
        largest = std::max(largest, p);
    }
    // HAQ's static state: the layer's kind, size and shape.
    for (size_t i = 0; i < names.size(); ++i) {
        space.features.push_back(weight_layer_features(
            graph.nodes()[static_cast<size_t>(graph.find(names[i]))], largest, widest));
    }
    space.reward = [&](const std::vector<double>& a) { return SearchSpace::Score(score(a), {}); };

    spec.episodes = options.episodes;
    spec.warmup = options.warmup;
    spec.salt = 11;
    spec.val_images = val_loader->num_samples();
    spec.what = "bits search";
    spec.unit = "weight";
    spec.layers_key = "weight_bits";
    spec.yaml_value = [&](int bits) {
        return fmt::format("{{weights: {}, activations: {}}}", bits, options.activations);
    };
    BitsSearchResult found = run_bits_search(ctx, space, spec, start);
    summary["search"] = std::move(found.summary);
    std::map<std::string, LayerBits> bits = base.layers;
    for (size_t i = 0; i < names.size(); ++i) {
        bits[names[i]] = {found.bits[i], options.activations};
    }
    return bits;
}

}  // namespace pocketflow::learners
