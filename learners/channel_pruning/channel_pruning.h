// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <vector>

#include "pocketflow/learner.h"
#include "pocketflow/prune_plan.h"

#include "group_pruner.h"
#include "ratio_search.h"

namespace pocketflow::learners {

/// Options of the `channel_pruning` learner.
struct ChannelPruningOptions {
    PruneBudget budget;                ///< flops_target/ratios, exclude, channel_multiple, target
    SelectionOptions selection;        ///< criterion, reconstruct, positions, ridge
    int64_t samples = 256;             ///< lasso: calibration images from the training split
    int64_t group_finetune_steps = 0;  ///< short fine-tune after each pruned group
    int64_t finetune_epochs = 4;       ///< final fine-tuning (0: none)
    double finetune_lr = 0.01;         ///< learning rate of (group and final) fine-tuning
    RatioSearchOptions search;         ///< `ratios: auto`
};

/// Channel pruning (He et al. 2017, "Channel Pruning for Accelerating Very Deep Neural Networks"):
/// channel-coupling groups are pruned one after another — channels chosen by LASSO on sampled
/// input patches of the partly pruned network against the original network's outputs (or by a
/// data-free criterion), consumers reconstructed by least squares — and removed physically, so the
/// model really is smaller and faster. Then the model is fine-tuned (with distillation when
/// enabled).
///
/// Example:
///   pipeline: [{learner: channel_pruning, flops_target: 0.5, criterion: lasso, finetune_epochs:
///   4}]
class ChannelPruning : public Learner {
public:
    explicit ChannelPruning(ChannelPruningOptions options);
    nlohmann::json run(RunContext& ctx) override;

private:
    ChannelPruningOptions options_;
};

/// Adds `channel_pruning` to a registry.
void register_channel_pruning(LearnerRegistry& registry);

}  // namespace pocketflow::learners
