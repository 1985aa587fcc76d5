// SPDX-License-Identifier: Apache-2.0
// The budget shared by the pruning learners: reading it, planning kept channels, reporting.
#include "pocketflow/prune_plan.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <fnmatch.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "pocketflow/error.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace pocketflow {

void read_prune_budget(ConfigReader& r, PruneBudget& b) {
    r.read("flops_target", b.flops_target, "kept fraction of MACs", ConfigReader::in_range(0, 1));
    YAML::Node ratios = r.raw("ratios", "uniform, or a list of kept ratios per prunable group");
    if (ratios.IsDefined() && !ratios.IsNull()) {
        if (ratios.IsScalar()) {
            b.auto_ratios = ratios.Scalar() == "auto";
            if (ratios.Scalar() != "uniform" && !b.auto_ratios) {
                r.fail("ratios", "expected uniform, auto or a list of kept ratios in (0, 1]");
            }
        } else {
            r.read("ratios", b.ratios, "kept ratio per prunable group",
                   ConfigReader::in_open_range(0, 1));
        }
    }
    YAML::Node exclude = r.raw("exclude", "glob patterns of layers never pruned");
    if (exclude.IsDefined() && !exclude.IsNull()) {
        if (!exclude.IsSequence()) {
            r.fail("exclude", "expected a list of layer name patterns");
        }
        for (const auto& e : exclude) {
            if (!e.IsScalar()) {
                r.fail("exclude", "expected a list of layer name patterns");
            }
            b.exclude.push_back(e.Scalar());
        }
    }
    r.read("keep_first_conv", b.keep_first_conv, "never prune the first conv's output channels");
    YAML::Node multiple = r.raw("channel_multiple",
                                "auto (the target CPU's SIMD width) or keep whole blocks of this "
                                "many channels (narrower groups stay whole)");
    b.channel_multiple = 0;  // auto
    if (multiple.IsDefined() && !multiple.IsNull() &&
        !(multiple.IsScalar() && multiple.Scalar() == "auto")) {
        r.read("channel_multiple", b.channel_multiple,
               "auto, or keep whole blocks of this many channels", ConfigReader::in_range(1, 256));
    }
    r.read("target", b.target,
           "deployment CPU whose SIMD width `channel_multiple: auto` uses (native: this machine)",
           cpu_target_names());
}

void check_prune_budget(const ConfigReader& r, const PruneBudget& b) {
    if (b.auto_ratios && b.flops_target <= 0) {
        r.fail("ratios", "auto searches ratios under a budget: give flops_target too");
    }
    if (b.ratios.empty() && b.flops_target <= 0) {
        r.fail("flops_target",
               "give flops_target (kept fraction of MACs, e.g. 0.5) or a list of ratios");
    }
    if (!b.ratios.empty() && b.flops_target > 0) {
        r.fail("ratios", "give either flops_target (uniform ratio) or a list of ratios, not both");
    }
    if (b.flops_target >= 1) {
        r.fail("flops_target", "must be below 1 (1 keeps everything)");
    }
}

PrunePlan plan_pruning(const Graph& graph, const PruneBudget& budget, const std::string& where) {
    const auto start = std::chrono::steady_clock::now();
    PF_CHECK(!is_quantized(graph), ConfigError,
             "{}: the model is quantized; prune before quantizing (put uniform_quantization "
             "after the pruning stage)",
             where);
    for (const auto& n : graph.nodes()) {
        // Selection and reconstruction rewrite weights that masks and codebooks pin down.
        PF_CHECK(!has_weight_constraints(n), ConfigError,
                 "{}: {} is sparse or has a codebook; prune channels before weight_sparsification "
                 "and nonuniform_quantization (prune -> sparsify -> quantize)",
                 where, n.name);
    }
    PrunePlan plan;
    std::vector<std::string> exclude = budget.exclude;
    if (budget.keep_first_conv) {
        for (const auto& n : graph.nodes()) {
            if (n.op == Op::kConv2d) {
                exclude.push_back(n.name);
                break;
            }
        }
    }
    for (const auto& pattern : budget.exclude) {
        bool used = false;
        for (const auto& n : graph.nodes()) {
            used = used || ::fnmatch(pattern.c_str(), n.name.c_str(), 0) == 0;
        }
        PF_CHECK(used, ConfigError,
                 "{}: failed to apply exclude pattern '{}': it matches no layer of the model",
                 where, pattern);
    }
    plan.groups = channel_groups(graph, exclude);
    for (size_t g = 0; g < plan.groups.size(); ++g) {
        if (plan.groups[g].prunable) {
            plan.prunable.push_back(g);
        } else {
            spdlog::debug("group {} ({} channels) kept: {}", plan.groups[g].name,
                          plan.groups[g].channels, plan.groups[g].reason);
        }
    }
    PF_CHECK(!plan.prunable.empty(), ConfigError, "{}: the model has no prunable channel group",
             where);
    plan.target = cpu_target(budget.target);
    plan.channel_multiple =
        budget.channel_multiple > 0 ? budget.channel_multiple : plan.target.channel_block;
    if (budget.channel_multiple == 0) {
        spdlog::info("[{}] channel_multiple auto: blocks of {} channels for {}", where,
                     plan.channel_multiple, plan.target.description);
    }
    const PrunedMacs macs(graph, plan.groups);
    plan.macs_before = macs.total();
    if (budget.ratios.empty()) {
        RatioFit fit =
            ratios_for_target(graph, plan.groups, budget.flops_target, plan.channel_multiple);
        plan.ratios = fit.ratios;
        spdlog::info(
            "[{}] uniform kept ratio {:.4f} for {} groups to keep {:.1f}% of MACs ({} groups then "
            "one or more channel blocks smaller to meet it)",
            where, fit.uniform, plan.prunable.size(), 100 * budget.flops_target, fit.refined);
    } else {
        PF_CHECK(budget.ratios.size() == plan.prunable.size(), ConfigError,
                 "{}: failed to prune with {} ratios: the model has {} prunable channel groups "
                 "({})",
                 where, budget.ratios.size(), plan.prunable.size(), [&] {
                     std::vector<std::string> names;
                     for (size_t g : plan.prunable) {
                         names.push_back(plan.groups[g].name);
                     }
                     return join(names, ", ");
                 }());
        plan.ratios = budget.ratios;
    }
    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        plan.keep.push_back(kept_channels(plan.groups[plan.prunable[r]].channels, plan.ratios[r],
                                          plan.channel_multiple));
    }
    plan.macs_planned = macs.at(plan.keep);
    plan.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return plan;
}

std::vector<int> cut_points(const Graph& graph, int count) {
    const auto& nodes = graph.nodes();
    const auto shapes = graph.infer_shapes();
    const auto n = static_cast<int>(nodes.size());
    // min_input_after[i]: the smallest input index of any node after i.
    std::vector<int> min_input_after(nodes.size() + 1, n);
    for (int i = n - 1; i >= 0; --i) {
        int m = min_input_after[static_cast<size_t>(i + 1)];
        if (i + 1 < n) {
            for (int in : nodes[static_cast<size_t>(i + 1)].inputs) {
                m = std::min(m, in);
            }
        }
        min_input_after[static_cast<size_t>(i)] = m;
    }
    std::vector<int> convs_upto(nodes.size(), 0);
    for (int i = 0; i < n; ++i) {
        convs_upto[static_cast<size_t>(i)] = (i > 0 ? convs_upto[static_cast<size_t>(i - 1)] : 0) +
                                             (nodes[static_cast<size_t>(i)].op == Op::kConv2d);
    }
    std::vector<int> candidates;
    for (int i = 1; i < n - 1; ++i) {
        if (shapes[static_cast<size_t>(i)].size() == 3 && i != graph.output() &&
            min_input_after[static_cast<size_t>(i)] >= i &&
            convs_upto[static_cast<size_t>(i)] > 0) {
            candidates.push_back(i);
        }
    }
    const int total = convs_upto.back();
    std::vector<int> cuts;
    size_t next = 0;  // candidates before this one are used or behind the last cut
    for (int p = 1; p <= count && next < candidates.size(); ++p) {
        const double target = static_cast<double>(total) * p / (count + 1);
        size_t best = next;
        for (size_t c = next; c < candidates.size(); ++c) {
            auto dist = [&](size_t k) {
                return std::abs(convs_upto[static_cast<size_t>(candidates[k])] - target);
            };
            if (dist(c) < dist(best)) {
                best = c;
            }
        }
        // Leave room for the cuts still to place.
        const size_t room = static_cast<size_t>(count - p);
        if (candidates.size() - best <= room && best > next) {
            best = std::max(next, candidates.size() > room ? candidates.size() - room - 1 : next);
        }
        cuts.push_back(candidates[best]);
        next = best + 1;
    }
    return cuts;
}

nlohmann::json pruned_layer_table(const Graph& before, const Graph& after) {
    nlohmann::json layers = nlohmann::json::array();
    auto stats_before = before.layer_stats(), stats_after = after.layer_stats();
    spdlog::info("{:<28}{:>10}{:>10}{:>14}{:>14}", "layer", "in", "out", "MACs before",
                 "MACs after");
    auto in = [](const Node& n) {
        return n.op == Op::kConv2d ? n.params.at("weight").size(1) * n.attrs.groups
                                   : n.params.at("weight").size(1);
    };
    for (size_t i = 0; i < after.nodes().size(); ++i) {
        const Node& a = before.nodes()[i];
        const Node& b = after.nodes()[i];
        if (a.op != Op::kConv2d && a.op != Op::kLinear) {
            continue;
        }
        int64_t out_a = a.params.at("weight").size(0), out_b = b.params.at("weight").size(0);
        layers.push_back({{"name", a.name},
                          {"in_before", in(a)},
                          {"in_after", in(b)},
                          {"out_before", out_a},
                          {"out_after", out_b},
                          {"macs_before", stats_before[i].macs},
                          {"macs_after", stats_after[i].macs}});
        spdlog::info("{:<28}{:>10}{:>10}{:>14}{:>14}", a.name, fmt::format("{}→{}", in(a), in(b)),
                     fmt::format("{}→{}", out_a, out_b), stats_before[i].macs, stats_after[i].macs);
    }
    return layers;
}

nlohmann::json pruning_summary(const std::string& where,
                               const PrunePlan& plan,
                               const PruneBudget& budget,
                               const Graph& before,
                               const Graph& after,
                               double seconds) {
    const int64_t macs_after = after.total_macs();
    const double kept = static_cast<double>(macs_after) / static_cast<double>(plan.macs_before);
    if (budget.flops_target > 0 && kept > budget.flops_target + 0.02) {
        spdlog::warn(
            "[{}] reached {:.1f}% of the MACs for flops_target {}: the channel granularity "
            "(channel_multiple {}) or the layers that cannot be pruned allow no closer "
            "allocation; exclude fewer layers, lower channel_multiple or give per-group ratios",
            where, 100 * kept, budget.flops_target, plan.channel_multiple);
    }
    spdlog::info("[{}] pruned to {} of {} MACs ({:.1f}%), {} of {} params in {:.1f} s", where,
                 human_count(static_cast<double>(macs_after)),
                 human_count(static_cast<double>(plan.macs_before)), 100.0 * kept,
                 human_count(static_cast<double>(after.total_params())),
                 human_count(static_cast<double>(before.total_params())), seconds);
    return {{"flops_target", budget.flops_target},
            {"channel_multiple", plan.channel_multiple},
            {"target", plan.target.name},
            {"ratios", plan.ratios},
            {"macs_before", plan.macs_before},
            {"macs_after", macs_after},
            {"macs_kept", kept},
            {"plan_seconds", plan.seconds},
            {"prune_seconds", seconds},
            {"layers", pruned_layer_table(before, after)}};
}

}  // namespace pocketflow
