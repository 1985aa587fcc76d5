// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/learner.h"

namespace pocketflow::learners {

/// `sparsity: auto` of weight_sparsification: the stage's `search:` section.
struct SparsitySearchOptions {
    double target = 0.8;         ///< budget: fraction of the searched layers' weights pruned
    double max_sparsity = 0.98;  ///< per layer
    int64_t episodes = 100;      ///< including warm-up
    int64_t warmup = 20;
    int64_t eval_images = 1000;  ///< validation images per candidate
    int64_t bn_batches = 4;      ///< training batches to re-estimate BN on per candidate (0: none)
};

/// Searches per-layer sparsities of the layers `nodes` of `graph` under a parameter budget with
/// the shared DDPG search (search.h; the RL allocation of ALGORITHMS.md): an episode's actions are
/// the layers' relative kept fractions, scaled onto the budget (`target` of all weights pruned);
/// the candidate is `graph` magnitude-pruned one-shot to those sparsities (BN re-estimated on
/// `bn_batches` batches) and scored by top-1 on a validation subset. The log_size heuristic is the
/// baseline to beat. Writes search/stage<i>/episodes.csv and search/stage<i>/best_sparsity.yaml;
/// adds `search` to `summary`. Returns the chosen sparsity of each layer of `nodes`.
std::vector<double> search_sparsities(RunContext& ctx,
                                      const Graph& graph,
                                      const std::vector<int>& nodes,
                                      const SparsitySearchOptions& options,
                                      nlohmann::json& summary);

}  // namespace pocketflow::learners
