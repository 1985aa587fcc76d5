// SPDX-License-Identifier: Apache-2.0
#pragma once

#include "pocketflow/learner.h"

namespace pocketflow::learners {

/// Options of the `full_precision` learner (YAML: `- learner: full_precision`).
struct FullPrecisionOptions {
    int64_t epochs = 0;  ///< epochs for this stage (0: the job's train.epochs)
};

/// Plain training of the graph with the job's recipe: the teacher of the other learners and the
/// baseline of every comparison. Distillation applies when the job enables it.
///
/// Example:
///   pipeline: [{learner: full_precision, epochs: 5}]
class FullPrecision : public Learner {
public:
    FullPrecision(FullPrecisionOptions options, TrainConfig train);
    nlohmann::json run(RunContext& ctx) override;

private:
    FullPrecisionOptions options_;
    TrainConfig train_;
};

/// Adds `full_precision` to a registry.
void register_full_precision(LearnerRegistry& registry);

}  // namespace pocketflow::learners
