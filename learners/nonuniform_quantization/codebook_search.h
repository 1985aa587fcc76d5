// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/codebook.h"
#include "pocketflow/learner.h"
#include "pocketflow/search.h"

namespace pocketflow::learners {

/// `bits: auto` of nonuniform_quantization: the stage's `search:` section.
struct CodebookSearchOptions {
    BitsBudget budget;       ///< mean index bits over the clustered weights
    int64_t episodes = 100;  ///< including warm-up
    int64_t warmup = 20;
    int64_t eval_images = 1000;  ///< validation images per candidate
};

/// Searches per-layer codebook bits for the layers `nodes` of `graph` (BN already folded) with the
/// shared DDPG search (search.h), HAQ-style: every episode's bits meet the budget (mean bits over
/// the clustered weights — a sparse layer's non-zeros — at most avg_bits); a candidate is `graph`
/// with each layer's weights replaced by its k-means codebook at those bits (each layer's codebook
/// at each width is computed once), scored by top-1 on a validation subset. Uniform bits
/// (floor(avg_bits)) are the baseline to beat. Writes search/stage<i>/episodes.csv and
/// search/stage<i>/best_bits.yaml; adds `search` to `summary`. Returns the bits of each layer of
/// `nodes`.
std::vector<int> search_codebook_bits(RunContext& ctx,
                                      const Graph& graph,
                                      const std::vector<int>& nodes,
                                      CodebookInit init,
                                      int kmeans_iterations,
                                      const CodebookSearchOptions& options,
                                      nlohmann::json& summary);

}  // namespace pocketflow::learners
