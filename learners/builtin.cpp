// SPDX-License-Identifier: Apache-2.0
// The one list of built-in learners. Keep it sorted; each learner lives in learners/<name>/.
#include "pocketflow/learner.h"

#include "channel_pruning/channel_pruning.h"
#include "discr_channel_pruning/discr_channel_pruning.h"
#include "full_precision/full_precision.h"
#include "nonuniform_quantization/nonuniform_quantization.h"
#include "uniform_quantization/uniform_quantization.h"
#include "weight_sparsification/weight_sparsification.h"

namespace pocketflow {

void register_builtin_learners(LearnerRegistry& registry) {
    learners::register_channel_pruning(registry);
    learners::register_discr_channel_pruning(registry);
    learners::register_full_precision(registry);
    learners::register_nonuniform_quantization(registry);
    learners::register_uniform_quantization(registry);
    learners::register_weight_sparsification(registry);
}

}  // namespace pocketflow
