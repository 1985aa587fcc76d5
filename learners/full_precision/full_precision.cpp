// SPDX-License-Identifier: Apache-2.0
#include "full_precision.h"

#include <spdlog/spdlog.h>

namespace pocketflow::learners {

FullPrecision::FullPrecision(FullPrecisionOptions options, TrainConfig train)
    : options_(options), train_(std::move(train)) {
    if (options_.epochs > 0) {
        train_.epochs = options_.epochs;
    }
}

nlohmann::json FullPrecision::run(RunContext& ctx) {
    // Its input is the network before the training it does (a fresh zoo model is random): no
    // teacher, unless the job names a teacher file.
    const DistillationConfig& d = ctx.job.distillation;
    if (d.enabled && d.teacher.empty()) {
        spdlog::info(
            "[stage{}_full_precision] trains without distillation: no distillation.teacher "
            "(the stage's input is the untrained network)",
            ctx.stage_index);
    }
    Trainer trainer = make_trainer(ctx, train_, "", /*input_teacher=*/false);
    TrainResult r = trainer.fit(*ctx.model, ctx.data, ctx.job.data,
                                ctx.job.seed + static_cast<uint64_t>(ctx.stage_index));
    nlohmann::json out = {{"epochs", train_.epochs},
                          {"steps", r.steps},
                          {"train_loss", r.train_loss},
                          {"train_top1", r.train_top1},
                          {"images_per_second", r.images_per_second}};
    if (r.val.samples > 0) {
        out["val_top1"] = r.val.top1;
        out["val_loss"] = r.val.loss;
    }
    return out;
}

void register_full_precision(LearnerRegistry& registry) {
    registry.add({"full_precision", "train the model at full precision (baseline and teacher)",
                  [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
                      FullPrecisionOptions o;
                      ConfigReader r = stage_reader(stage, job);
                      r.read("epochs", o.epochs, "epochs for this stage (0: train.epochs)",
                             ConfigReader::at_least(0));
                      r.finish();
                      return std::make_unique<FullPrecision>(o, job.train);
                  }});
}

}  // namespace pocketflow::learners
