// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/latency.h"
#include "pocketflow/learner.h"
#include "pocketflow/prune_plan.h"

#include "group_pruner.h"

namespace pocketflow::learners {

/// `ratios: auto` of channel_pruning: the stage's `search:` section.
struct RatioSearchOptions {
    int64_t episodes = 100;      ///< including warm-up
    int64_t warmup = 20;         ///< random episodes before the agent learns
    double min_ratio = 0.2;      ///< smallest kept ratio of a group
    int64_t eval_images = 1000;  ///< validation images per candidate
    /// Training batches re-estimating the BN statistics of candidates and of the pruned model
    /// (0: keep them). The reader's default: 0 under lasso (its reconstruction targets the
    /// original outputs), 4 under a data-free criterion.
    int64_t bn_batches = 0;
    std::string criterion = "lasso";  ///< channel selection of candidates (default: the stage's)
    int64_t samples = 128;  ///< lasso candidates: calibration images (the stage's first ones)
    /// top1: validation top-1 | amc: AMC's −error·log(MACs) | latency: top-1 · (L_u / L)^w with
    /// L the candidate's latency from a measured per-layer table, L_u the uniform candidate's.
    std::string reward = "top1";
    LatencyOptions latency;        ///< latency: where the table is measured
    double latency_weight = 0.07;  ///< latency: w (MnasNet's soft-constraint exponent)
    /// Training steps of each candidate before it is scored (the job's recipe at finetune_lr,
    /// no distillation): scores what fine-tuning will recover, not the pruned model as is.
    int64_t finetune_steps = 0;
    double finetune_lr = 0.01;  ///< of those steps (default: the stage's finetune_lr)
    /// Rerank: the `rerank` best distinct policies and the uniform ratios are each pruned, trained
    /// `rerank_steps` steps of the stage's fine-tuning recipe (the job's schedule over those steps
    /// at `rerank_lr`, distillation as the job says) and scored on `rerank_images` validation
    /// images; the best of them is the result (uniform on a tie). 0: off.
    int64_t rerank = 0;
    int64_t rerank_steps = 0;   ///< 0: one epoch of the job's training
    int64_t rerank_images = 0;  ///< 0: the whole validation split
    double rerank_lr = 0.01;    ///< default: the stage's finetune_lr
};

/// Searches per-group kept ratios under `plan`'s MACs budget (AMC): each episode's policy is
/// applied to a copy as the stage would prune it (`stage_selection` with the search's criterion:
/// LASSO + reconstruction by default, on `samples` calibration images; BN statistics re-estimated
/// on `bn_batches` training batches) and scored by validation top-1. Writes
/// search/stage<i>/episodes.csv and search/stage<i>/best_ratios.yaml in the run directory; adds
/// `search` (best and uniform validation top-1, episodes, seconds) to `summary`. Returns the best
/// ratios (one per prunable group).
std::vector<double> search_ratios(RunContext& ctx,
                                  const PrunePlan& plan,
                                  const RatioSearchOptions& options,
                                  const SelectionOptions& stage_selection,
                                  double flops_target,
                                  nlohmann::json& summary);

}  // namespace pocketflow::learners
