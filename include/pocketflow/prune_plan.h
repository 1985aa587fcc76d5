// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/config.h"
#include "pocketflow/cpu.h"
#include "pocketflow/prune.h"

namespace pocketflow {

/// The budget part of every channel-pruning learner's stage (channel_pruning,
/// discr_channel_pruning): how much to keep, where, and in which channel granularity. One reader,
/// one planner, so that every pruning learner takes the same keys with the same meaning.
///
/// Example (YAML):
///   {flops_target: 0.5, channel_multiple: auto, target: native, exclude: ["fc*"]}
struct PruneBudget {
    double flops_target = 0;           ///< kept fraction of MACs (0: `ratios` as given)
    std::vector<double> ratios;        ///< per prunable group kept ratios (empty: uniform)
    bool auto_ratios = false;          ///< `ratios: auto`: searched (DDPG) under flops_target
    std::vector<std::string> exclude;  ///< glob patterns of layer names never pruned
    bool keep_first_conv = true;       ///< never prune the first conv's output channels
    int64_t channel_multiple = 0;      ///< whole blocks of channels; 0 = auto (the target's SIMD)
    std::string target = "native";     ///< deployment CPU for `auto` (cpu.h)
};

/// Reads the budget keys of a pruning stage (flops_target, ratios, exclude, keep_first_conv,
/// channel_multiple, target); check_prune_budget, after the reader's finish(), checks them
/// together (exactly one of flops_target and ratios).
void read_prune_budget(ConfigReader& reader, PruneBudget& budget);
void check_prune_budget(const ConfigReader& reader, const PruneBudget& budget);

/// What a pruning learner will do: the channel groups, which of them are pruned, and how many
/// channels each keeps.
struct PrunePlan {
    std::vector<ChannelGroup> groups;  ///< all groups of the graph
    std::vector<size_t> prunable;      ///< indices into `groups`, in order
    std::vector<double> ratios;        ///< kept ratio per prunable group
    std::vector<int64_t> keep;         ///< kept channels per prunable group
    int64_t channel_multiple = 1;      ///< resolved block size
    CpuTarget target;                  ///< resolved target (for `auto`)
    int64_t macs_before = 0;
    int64_t macs_planned = 0;  ///< MACs of the graph pruned as planned (shape-only count)
    double seconds = 0;        ///< time taken by the planning (groups and budget search)
};

/// Plans the pruning of `graph` under `budget`: groups (excluding the first conv and `exclude`
/// patterns, each of which must match a layer), the resolved channel block, and the kept counts
/// (bisection + block refinement for flops_target, or the given ratios). `where` prefixes
/// messages (the stage's key path). Logs the plan.
PrunePlan plan_pruning(const Graph& graph, const PruneBudget& budget, const std::string& where);

/// Up to `count` nodes where the network can be cut into `count + 1` consecutive parts of about
/// equal numbers of convs: nodes with a feature-map output [C, H, W] that every later node reaches
/// only through them (the output of a residual block, not the inside of one). DCP attaches its
/// auxiliary classifiers there. Sorted; fewer when the graph has fewer such places.
std::vector<int> cut_points(const Graph& graph, int count);

/// Per-layer table (channels in/out and MACs before → after) of a pruned graph against its
/// original: logged, and returned as JSON rows for the stage summary.
nlohmann::json pruned_layer_table(const Graph& before, const Graph& after);

/// Logs the result of a pruning (MACs and params kept, time; a warning when the MACs reached miss
/// `flops_target` by more than 2 points) and returns the summary every pruning stage shares:
/// flops_target, channel_multiple, target, ratios, macs_before/after, macs_kept, plan_seconds,
/// prune_seconds and the per-layer table.
nlohmann::json pruning_summary(const std::string& where,
                               const PrunePlan& plan,
                               const PruneBudget& budget,
                               const Graph& before,
                               const Graph& after,
                               double seconds);

}  // namespace pocketflow
