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
    BitsBudget budget = options.budget;
    budget.weights = params;
    auto bits_of = [&](double a) { return budget.bits_of(a); };
    auto mean_bits = [&](const std::vector<double>& actions) { return budget.mean_bits(actions); };
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
    budget.describe(space);
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

    const int uniform_bits = static_cast<int>(std::floor(budget.avg_bits));
    const std::vector<double> uniform(names.size(), static_cast<double>(uniform_bits));
    const double uniform_top1 = score(uniform);
    spdlog::info(
        "[{}] bits search: {} layers, mean {} weight bits, {} episodes ({} warm-up); uniform "
        "{} bits: validation top-1 {:.2f}% on {} images",
        where, names.size(), budget.avg_bits, options.episodes, options.warmup, uniform_bits,
        uniform_top1, val_loader->num_samples());
    const std::filesystem::path dir = ctx.run.path() / "search";  // made by the search
    const SearchResult result =
        run_stage_search(ctx, space, options.episodes, options.warmup, 11, "bits search", uniform,
                         uniform_top1, fmt::format("uniform {} bits", uniform_bits));
    std::map<std::string, LayerBits> bits = base.layers;
    nlohmann::json chosen = nlohmann::json::object();
    std::string yaml = fmt::format(
        "# bits: auto found these (validation top-1 {:.2f}% before fine-tuning, uniform {} bits "
        "{:.2f}%; mean weight bits {:.3f})\nbits:\n",
        result.best_reward, uniform_bits, uniform_top1, mean_bits(result.best));
    for (size_t i = 0; i < names.size(); ++i) {
        bits[names[i]] = {bits_of(result.best[i]), options.activations};
        chosen[names[i]] = bits_of(result.best[i]);
        yaml += fmt::format("  \"{}\": {{weights: {}, activations: {}}}\n", names[i],
                            bits_of(result.best[i]), options.activations);
    }
    write_file_atomic(dir / "best_bits.yaml", yaml);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    summary["search"] = {{"episodes", result.episodes},
                         {"best_val_top1", result.best_reward},
                         {"uniform_val_top1", uniform_top1},
                         {"uniform_bits", uniform_bits},
                         {"avg_bits_target", budget.avg_bits},
                         {"avg_bits", mean_bits(result.best)},
                         {"weight_bits", chosen},
                         {"val_images", val_loader->num_samples()},
                         {"seconds", seconds},
                         {"resumed_episodes", result.resumed},
                         {"chosen", result.baseline_kept ? "uniform" : "search"},
                         {"agent_best_val_top1", result.agent_best_reward}};
    spdlog::info(
        "[{}] bits search done in {:.0f} s: best validation top-1 {:.2f}% (uniform {} bits "
        "{:.2f}%) at a mean of {:.3f} weight bits; {}",
        where, seconds, result.best_reward, uniform_bits, uniform_top1, mean_bits(result.best),
        (dir / "best_bits.yaml").string());
    return bits;
}

}  // namespace pocketflow::learners
