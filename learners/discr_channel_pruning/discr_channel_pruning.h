// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/learner.h"
#include "pocketflow/prune_plan.h"

namespace pocketflow::learners {

/// Options of the `discr_channel_pruning` learner.
struct DcpOptions {
    PruneBudget budget;           ///< flops_target/ratios, exclude, channel_multiple, target
    int64_t stages = 3;           ///< auxiliary classifiers P (P + 1 pruning stages)
    int64_t block_steps = 200;    ///< stage-wise fine-tuning steps on L_p + L before selection
    double block_lr = 0.01;       ///< learning rate of the stage-wise fine-tuning (job optimizer)
    int64_t samples = 512;        ///< selection images (training split, seeded, no augmentation)
    int64_t batch_size = 64;      ///< selection batch
    int64_t layer_steps = 5;      ///< Adam steps re-optimising the kept weights after each addition
    double layer_lr = 1e-3;       ///< their learning rate
    double aux_weight = 1.0;      ///< λ: weight of the discrimination loss against reconstruction
    int64_t finetune_epochs = 4;  ///< final fine-tuning (0: none)
    double finetune_lr = 0.01;
};

/// An auxiliary classifier of DCP on a feature map of C channels: BN → ReLU → global average
/// pooling → linear, trained with cross-entropy. Plain tensors (not a graph node): it exists only
/// while the learner runs and is never part of the model.
struct AuxHead {
    AuxHead(int64_t channels, int64_t classes, uint64_t seed);
    at::Tensor forward(const at::Tensor& features, bool training);
    at::Tensor loss(const at::Tensor& features, const at::Tensor& labels, bool training);
    std::vector<at::Tensor> parameters() const { return {bn_weight, bn_bias, fc_weight, fc_bias}; }

    at::Tensor bn_weight, bn_bias, running_mean, running_var, fc_weight, fc_bias;
};

/// The discrimination loss of one selection: the auxiliary head's cross-entropy on the feature
/// map of node `node`, or (head == nullptr) the network's own cross-entropy.
struct DiscriminationLoss {
    AuxHead* head = nullptr;
    int node = -1;
};

/// DCP's greedy channel selection for one channel group of `model` (Zhuang et al. 2018, Alg. 2):
/// starting from no channel, repeatedly adds the channel whose gradient of
/// L = Σ_consumers ½·mean‖conv_ref(x) − conv(x)‖² + aux_weight·L_p w.r.t. the consumers' weights
/// has the largest Frobenius norm, restores that channel's weights and re-optimises the kept
/// weights (layer_steps Adam steps), until `keep` channels are in. The dropped channels' consumer
/// weights are left at zero, so `model` computes what the physically pruned model will. Returns
/// the kept channel indices (sorted).
std::vector<int64_t> dcp_select(Model& model,
                                Model& reference,
                                const ChannelGroup& group,
                                int64_t keep,
                                const DiscriminationLoss& discrimination,
                                Loader& data,
                                const DcpOptions& options);

/// Discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018; PocketFlow's
/// DisChnPrunedLearner): auxiliary classifiers split the network into P + 1 stages; stage by
/// stage, the network is fine-tuned on that stage's auxiliary loss plus the final loss, then the
/// channels of each group in the stage are chosen greedily by dcp_select; finally the channels are
/// removed physically (the same coupling groups and surgery as channel_pruning) and the model is
/// fine-tuned (with distillation when enabled).
///
/// Example:
///   pipeline: [{learner: discr_channel_pruning, flops_target: 0.5, stages: 3}]
class DiscrChannelPruning : public Learner {
public:
    explicit DiscrChannelPruning(DcpOptions options);
    nlohmann::json run(RunContext& ctx) override;

private:
    DcpOptions options_;
};

/// Adds `discr_channel_pruning` to a registry.
void register_discr_channel_pruning(LearnerRegistry& registry);

}  // namespace pocketflow::learners
