// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "pocketflow/learner.h"

#include "sparsity_search.h"

namespace pocketflow::learners {

/// Options of `weight_sparsification` (README.md in this folder).
struct WeightSparsificationOptions {
    PerLayerSetting sparsity;            ///< final sparsity: one number, per-layer globs or a list
    std::string allocation = "uniform";  ///< one number: uniform | log_size | global
    std::string pattern = "unstructured";  ///< or "N:M" (2:4)
    int nm_n = 0, nm_m = 0;
    double begin = 0.1;       ///< schedule start, fraction of the stage's steps
    double end = 0.5;         ///< schedule end (final sparsity from here on)
    int64_t frequency = 100;  ///< steps between mask updates
    double alpha = 3;         ///< schedule exponent
    int64_t epochs = 0;       ///< training epochs of the stage (0: prune at once, no training)
    double lr = 0.01;
    bool keep_first_last = true;   ///< first conv and last linear stay dense unless named
    SparsitySearchOptions search;  ///< sparsity: auto
};

/// Unstructured magnitude pruning on Zhu & Gupta's gradual schedule, or N:M structured sparsity:
/// masks live on the graph (sparsity.h), training keeps masked weights at zero, and the .pfm stores
/// only the non-zeros (weight_codec.h).
class WeightSparsification : public Learner {
public:
    explicit WeightSparsification(WeightSparsificationOptions options);
    nlohmann::json run(RunContext& ctx) override;

private:
    WeightSparsificationOptions options_;
};

void register_weight_sparsification(LearnerRegistry& registry);

}  // namespace pocketflow::learners
