// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/config.h"
#include "pocketflow/data.h"
#include "pocketflow/model.h"

namespace pocketflow {

class RunDir;

struct EvalResult {
    double loss = 0, top1 = 0, top5 = 0;  ///< top-1/top-5 in percent
    int64_t samples = 0;
};

/// Accuracy and mean loss of a model over a loader (eval mode, no gradients).
EvalResult evaluate(Model& model, Loader& loader);

/// Inference times (ms) of `models` on `input` in LibTorch, no gradients: `warmup` untimed runs,
/// then `repeat` timed ones, interleaved (run k of each model, then run k+1) so that a change in
/// the machine's load hits all of them alike. One vector of times per model.
std::vector<std::vector<double>> time_forward(const std::vector<Model*>& models,
                                              const at::Tensor& input,
                                              int64_t warmup,
                                              int64_t repeat);

/// Re-estimates every BatchNorm's running statistics as the cumulative average over the batches
/// of `bn` (train mode for the statistics only: Dropout stays an identity and draws nothing), e.g.
/// after pruning changed the statistics. Leaves the model in eval mode.
void reestimate_bn(Model& model, Loader& bn);

struct TrainResult {
    double train_loss = 0, train_top1 = 0;  ///< last epoch
    EvalResult val;                         ///< last evaluation on the validation split (if any)
    int64_t steps = 0;
    double images_per_second = 0;
    double seconds = 0;
};

/// Cross-entropy with label smoothing ε: (1−ε)·NLL + ε·mean over classes of −log p.
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& labels, double smoothing);

/// Knowledge-distillation loss T²·KL(softmax(t/T) ‖ softmax(s/T)), batch mean.
at::Tensor distillation_loss(const at::Tensor& student_logits,
                             const at::Tensor& teacher_logits,
                             double temperature);

/// Learning rate at fractional epoch `epoch` (0 ≤ epoch ≤ total) for a schedule.
double learning_rate_at(const ScheduleConfig& schedule,
                        double base_lr,
                        double epoch,
                        int64_t total_epochs);

/// The factor on the learning rate for a global batch of `batch_size` × `world_size` images
/// (data-parallel workers): `train.optimizer.lr` is tuned for `train.reference_batch` images
/// (default: one worker's `batch_size`); `lr_scaling: linear` multiplies it by global/reference
/// (Goyal et al., 2017), `sqrt` by the square root, `none` keeps it.
double lr_scale_for(const TrainConfig& config, int64_t batch_size, int world_size);

/// Trains a Model with SGD/Adam, a LR schedule, label smoothing, gradient clipping, optional
/// distillation, evaluation each epoch, a NaN guard, atomic checkpoints every N steps and at epoch
/// ends, and exact resume from the last checkpoint.
///
/// Hooks let learners act without owning the loop: `add_loss_term` adds a term to the loss of every
/// step, `add_after_step` runs after each optimizer step (re-apply masks, update quantisers).
///
/// Example:
///   Trainer trainer(job.train, run, "stage0");
///   TrainResult r = trainer.fit(model, data, job.data, job.seed);
class Trainer {
public:
    using LossTerm = std::function<at::Tensor(
        const at::Tensor& images, const at::Tensor& logits, const at::Tensor& labels)>;
    using AfterStep = std::function<void(Model& model, int64_t step)>;
    /// A loss on feature maps captured in the forward pass (values of graph nodes, in the order
    /// of the capture list), e.g. auxiliary classifiers.
    using FeatureLoss = std::function<at::Tensor(const std::vector<at::Tensor>& features,
                                                 const at::Tensor& labels)>;

    /// `tag` names this training's checkpoint inside the run directory (one per pipeline stage).
    Trainer(TrainConfig config, RunDir* run, std::string tag);

    void add_loss_term(LossTerm term) { loss_terms_.push_back(std::move(term)); }
    void add_after_step(AfterStep hook) { after_step_.push_back(std::move(hook)); }
    /// Adds `loss` on the values of the graph nodes `capture` to every step's loss, and trains
    /// `params` (tensors outside the model, e.g. an auxiliary head's) with the model. Those
    /// tensors are not checkpointed: use it for trainings that need no resume.
    void add_feature_loss(std::vector<int> capture,
                          FeatureLoss loss,
                          std::vector<at::Tensor> params = {});
    /// Uses `teacher` (eval mode, no gradients) for distillation with this config.
    void set_teacher(std::shared_ptr<Model> teacher, const DistillationConfig& config);
    /// Resume from this training's checkpoint if the run directory has one.
    void set_resume(bool resume) { resume_ = resume; }
    /// Test hook: stop (as if interrupted) after this many steps of this process (0: never).
    void set_stop_after_steps(int64_t steps) { stop_after_steps_ = steps; }

    TrainResult fit(Model& model,
                    const DataBundle& data,
                    const DataConfig& data_config,
                    uint64_t seed);

private:
    TrainConfig config_;
    RunDir* run_;
    std::string tag_;
    std::vector<LossTerm> loss_terms_;
    std::vector<AfterStep> after_step_;
    std::vector<int> capture_;
    std::vector<std::pair<std::vector<int>, FeatureLoss>> feature_losses_;
    std::vector<at::Tensor> extra_params_;
    std::shared_ptr<Model> teacher_;
    DistillationConfig distillation_;
    bool resume_ = false;
    int64_t stop_after_steps_ = 0;
};

}  // namespace pocketflow
