// SPDX-License-Identifier: Apache-2.0
#include <cmath>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/trainer.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace F = torch::nn::functional;

TEST(LossTest, CrossEntropyWithSmoothingMatchesReference) {
    torch::manual_seed(0);
    auto logits = torch::randn({6, 5});
    auto labels = torch::tensor({0, 1, 2, 3, 4, 0}, torch::kLong);
    for (double eps : {0.0, 0.1, 0.3}) {
        auto ref =
            F::cross_entropy(logits, labels, F::CrossEntropyFuncOptions().label_smoothing(eps));
        EXPECT_NEAR(cross_entropy(logits, labels, eps).item<double>(), ref.item<double>(), 1e-6)
            << eps;
    }
}

TEST(LossTest, DistillationLossMatchesHandComputation) {
    // Two classes, one sample: student logits (0, 0), teacher logits (2, 0), T = 2.
    // p_t = softmax(1, 0) = (e/(e+1), 1/(e+1)); p_s = (0.5, 0.5).
    // KL = sum p_t log(p_t / p_s); loss = T² · KL.
    auto s = torch::tensor({{0.0f, 0.0f}});
    auto t = torch::tensor({{2.0f, 0.0f}});
    double e = std::exp(1.0);
    double p0 = e / (e + 1), p1 = 1 / (e + 1);
    double kl = p0 * std::log(p0 / 0.5) + p1 * std::log(p1 / 0.5);
    EXPECT_NEAR(distillation_loss(s, t, 2.0).item<double>(), 4.0 * kl, 1e-6);
    EXPECT_NEAR(distillation_loss(t, t, 3.0).item<double>(), 0.0, 1e-7);
}

TEST(ScheduleTest, CosineStepMultistepWarmup) {
    ScheduleConfig s;
    s.name = "cosine";
    EXPECT_DOUBLE_EQ(learning_rate_at(s, 0.1, 0, 10), 0.1);
    EXPECT_NEAR(learning_rate_at(s, 0.1, 5, 10), 0.05, 1e-12);
    EXPECT_NEAR(learning_rate_at(s, 0.1, 10, 10), 0.0, 1e-12);
    s.lr_min = 0.01;
    EXPECT_NEAR(learning_rate_at(s, 0.1, 10, 10), 0.01, 1e-12);
    s.warmup_epochs = 2;
    EXPECT_NEAR(learning_rate_at(s, 0.1, 1, 10), 0.05, 1e-12);
    EXPECT_NEAR(learning_rate_at(s, 0.1, 2, 10), 0.1, 1e-12);
    ScheduleConfig step;
    step.name = "step";
    step.step_size = 3;
    step.gamma = 0.5;
    EXPECT_NEAR(learning_rate_at(step, 1.0, 2.9, 10), 1.0, 1e-12);
    EXPECT_NEAR(learning_rate_at(step, 1.0, 6.0, 10), 0.25, 1e-12);
    ScheduleConfig ms;
    ms.name = "multistep";
    ms.milestones = {2, 5};
    ms.gamma = 0.1;
    EXPECT_NEAR(learning_rate_at(ms, 1.0, 4.0, 10), 0.1, 1e-12);
    EXPECT_NEAR(learning_rate_at(ms, 1.0, 5.0, 10), 0.01, 1e-12);
}

struct TinySetup {
    DataConfig data_cfg;
    DataBundle data;
    TrainConfig train;
    TinySetup() {
        data_cfg.dataset = "synthetic";
        data_cfg.synthetic_train = 512;
        data_cfg.synthetic_test = 128;
        data_cfg.synthetic_classes = 4;
        data_cfg.synthetic_shape = {1, 12, 12};
        data_cfg.batch_size = 32;
        data_cfg.val_size = 64;
        data_cfg.mean = {0.5};
        data_cfg.std = {0.3};
        data = load_data(data_cfg, 1);
        train.epochs = 3;
        train.optimizer.lr = 0.1;
        train.log_every = 1000;
    }
    std::shared_ptr<Model> model(uint64_t seed = 0) const {
        return std::make_shared<Model>(build_zoo_model("lenet5", 4, {1, 12, 12}, seed),
                                       ModelMeta{});
    }
};

TEST(TrainerTest, LearnsSyntheticTask) {
    torch::manual_seed(0);
    TinySetup s;
    auto model = s.model();
    auto test = s.data.test_loader(s.data_cfg);
    double before = evaluate(*model, *test).top1;
    Trainer trainer(s.train, nullptr, "t");
    TrainResult r = trainer.fit(*model, s.data, s.data_cfg, 1);
    EXPECT_EQ(r.steps, 3 * 14);
    EXPECT_GT(r.val.top1, 90.0);
    EXPECT_GT(evaluate(*model, *test).top1, std::max(90.0, before));
    EXPECT_GT(r.images_per_second, 0);
}

TEST(TrainerTest, InferenceAfterAnOptimizerStepUsesTheNewWeights) {
    // The inference path caches packed conv weights; an SGD step must not leave them stale
    // (it did: per-epoch validation then scored the first epoch's weights).
    torch::manual_seed(0);
    Model model(build_zoo_model("lenet5", 4, {1, 28, 28}), {});
    const at::Tensor x = torch::randn({4, 1, 28, 28});
    model.eval();
    {
        torch::NoGradGuard no_grad;
        model.forward(x);  // packs the weights
    }
    torch::optim::SGD sgd(model.parameters(), torch::optim::SGDOptions(0.5));
    model.train();
    at::Tensor loss = model.forward(x).pow(2).mean();
    loss.backward();
    sgd.step();
    model.eval();
    torch::NoGradGuard no_grad;
    const at::Tensor cached = model.forward(x);
    Model fresh(model.graph().clone(), {});
    fresh.eval();
    EXPECT_TRUE(torch::allclose(cached, fresh.forward(x), 1e-4, 1e-5));
}

TEST(TrainerTest, HooksRunAndLossTermsApply) {
    torch::manual_seed(0);
    TinySetup s;
    s.train.epochs = 1;
    auto model = s.model();
    Trainer trainer(s.train, nullptr, "t");
    int64_t calls = 0;
    trainer.add_after_step([&](Model&, int64_t) { ++calls; });
    // A huge penalty on the logits' magnitude drives them towards zero.
    trainer.add_loss_term([](const at::Tensor&, const at::Tensor& logits, const at::Tensor&) {
        return 10.0 * logits.pow(2).mean();
    });
    trainer.fit(*model, s.data, s.data_cfg, 1);
    EXPECT_EQ(calls, 14);
    model->eval();
    torch::NoGradGuard no_grad;
    auto batch = s.data.test_loader(s.data_cfg);
    batch->start_epoch(0);
    EXPECT_LT(model->forward(batch->next()->images).abs().mean().item<double>(), 1.0);
}

TEST(TrainerTest, GradientClippingCoversTheExtraTrainedTensors) {
    // A feature loss's own tensors (DCP's auxiliary heads) are stepped by the same optimizer: the
    // clipped norm is over them too, so a huge gradient on one moves it by at most lr * clip.
    torch::manual_seed(0);
    TinySetup s;
    s.train.epochs = 1;
    s.train.steps_per_epoch = 1;
    s.train.grad_clip = 1e-3;
    s.train.optimizer.momentum = 0;
    s.train.optimizer.weight_decay = 0;
    auto model = s.model();
    at::Tensor extra = torch::zeros({8}, torch::requires_grad());
    Trainer trainer(s.train, nullptr, "t");
    trainer.add_feature_loss(
        {model->graph().find("fc1")},
        [&](const std::vector<at::Tensor>&, const at::Tensor&) { return 1e6 * extra.sum(); },
        {extra});
    trainer.fit(*model, s.data, s.data_cfg, 1);
    EXPECT_LE(extra.detach().abs().max().item<double>(), s.train.optimizer.lr * 1e-3 * 1.0001);
    EXPECT_GT(extra.detach().abs().max().item<double>(), 0.0);
}

TEST(TrainerTest, NonFiniteLossStopsWithClearError) {
    TinySetup s;
    auto model = s.model();
    Trainer trainer(s.train, nullptr, "t");
    int64_t steps = 0;
    trainer.add_after_step([&](Model&, int64_t) { ++steps; });
    // A loss term that turns NaN at the third step.
    trainer.add_loss_term([&](const at::Tensor&, const at::Tensor& logits, const at::Tensor&) {
        return logits.sum() * (steps == 2 ? std::nan("") : 0.0);
    });
    testing::expect_error<NumericError>([&] { trainer.fit(*model, s.data, s.data_cfg, 1); },
                                        "loss became nan at epoch 1 step 2");
    EXPECT_EQ(steps, 2);
}

TEST(TrainerTest, ResumeGivesTheSameWeightsAsAnUninterruptedRun) {
    TinySetup s;
    s.train.checkpoint_every = 4;
    s.data_cfg.augment.crop_padding = 1;
    s.data_cfg.augment.hflip = true;
    auto run = [&](const std::filesystem::path& dir, int64_t stop_after) {
        torch::manual_seed(123);
        RunDir rd(dir);
        auto model = s.model(9);
        Trainer t(s.train, &rd, "stage0");
        t.set_resume(true);
        t.set_stop_after_steps(stop_after);
        t.fit(*model, s.data, s.data_cfg, 1);
        return model;
    };
    testing::TempDir a, b;
    auto full = run(a.path(), 0);
    EXPECT_THROW(run(b.path(), 7), Interrupted);  // mid-epoch 2
    EXPECT_THROW(run(b.path(), 6), Interrupted);  // resumed, stopped again in epoch 3
    auto resumed = run(b.path(), 0);
    auto pa = full->named_parameters(), pb = resumed->named_parameters();
    for (const auto& item : pa) {
        EXPECT_TRUE(torch::equal(item.value(), pb[item.key()])) << item.key();
    }
}

TEST(TrainerTest, DistillationTermPullsStudentToTeacher) {
    torch::manual_seed(0);
    TinySetup s;
    auto teacher = s.model(1);
    Trainer pre(s.train, nullptr, "teacher");
    pre.fit(*teacher, s.data, s.data_cfg, 1);
    DistillationConfig d;
    d.enabled = true;
    d.weight = 1.0;  // distillation only: the student learns from the teacher's outputs alone
    d.temperature = 1.0;
    auto student = s.model(2);
    Trainer t(s.train, nullptr, "student");
    t.set_teacher(teacher, d);
    TrainResult r = t.fit(*student, s.data, s.data_cfg, 1);
    EXPECT_GT(r.val.top1, 80.0);
    for (const auto& p : teacher->parameters()) {
        EXPECT_FALSE(p.requires_grad());
    }
}

}  // namespace
}  // namespace pocketflow
