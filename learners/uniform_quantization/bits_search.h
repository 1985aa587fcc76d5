// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "pocketflow/learner.h"
#include "pocketflow/quant.h"
#include "pocketflow/search.h"

namespace pocketflow::learners {

/// `bits: auto` of uniform_quantization: the stage's `search:` section.
struct BitsSearchOptions {
    BitsBudget budget;       ///< parameter-weighted mean weight bits of searched layers
    int activations = 8;     ///< activation bits of the searched layers
    int64_t episodes = 100;  ///< including warm-up
    int64_t warmup = 20;
    int64_t eval_images = 1000;  ///< validation images per candidate
};

/// Searches per-layer weight bits (HAQ-style, on the shared DDPG search of search.h) for the
/// layers of `layers` that are not fixed (`fixed`: the first/last layers kept at 8 bits): each
/// episode's bits meet the budget (parameter-weighted mean ≤ avg_bits), the candidate is `graph`
/// (BN folded) with those bits and activation ranges calibrated once on `calibration`, scored by
/// top-1 on a validation subset. Writes search/stage<i>/episodes.csv and
/// search/stage<i>/best_bits.yaml; adds `search` to `summary`. Returns the bits of every layer
/// (fixed ones unchanged).
std::map<std::string, LayerBits> search_bits(RunContext& ctx,
                                             const Graph& graph,
                                             const QuantizeOptions& base,
                                             const std::map<std::string, bool>& fixed,
                                             const BitsSearchOptions& options,
                                             Loader& calibration,
                                             nlohmann::json& summary);

}  // namespace pocketflow::learners
