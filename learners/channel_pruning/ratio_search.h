// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/learner.h"
#include "pocketflow/prune_plan.h"

namespace pocketflow::learners {

/// `ratios: auto` of channel_pruning: the stage's `search:` section.
struct RatioSearchOptions {
    int64_t episodes = 100;        ///< including warm-up
    int64_t warmup = 20;           ///< random episodes before the agent learns
    double min_ratio = 0.2;        ///< smallest kept ratio of a group
    int64_t eval_images = 1000;    ///< validation images per candidate
    int64_t bn_batches = 4;        ///< training batches re-estimating BN statistics (0: keep them)
    std::string criterion = "l1";  ///< data-free channel selection of candidates
};

/// Searches per-group kept ratios under `plan`'s MACs budget (AMC): each episode's policy is
/// applied to a copy (channels chosen by `criterion`, BN statistics re-estimated on a few training
/// batches) and scored by validation top-1. Writes search/episodes.csv and search/best_ratios.yaml
/// in the run directory; adds `search` (best and uniform validation top-1, episodes, seconds) to
/// `summary`. Returns the best ratios (one per prunable group).
std::vector<double> search_ratios(RunContext& ctx,
                                  const PrunePlan& plan,
                                  const RatioSearchOptions& options,
                                  double flops_target,
                                  nlohmann::json& summary);

}  // namespace pocketflow::learners
