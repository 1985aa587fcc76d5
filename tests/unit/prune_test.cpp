// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/prune.h"

#include <cmath>
#include <numeric>
#include <random>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

torch::Tensor run(const Graph& g, const torch::Tensor& x) {
    Model m(g.clone(), {});
    m.eval();
    torch::NoGradGuard no_grad;
    return m.forward(x);
}

const ChannelGroup* find_group(const std::vector<ChannelGroup>& groups,
                               const Graph& g,
                               const std::string& producer) {
    int id = g.find(producer);
    for (const auto& group : groups) {
        if (std::find(group.producers.begin(), group.producers.end(), id) !=
            group.producers.end()) {
            return &group;
        }
    }
    return nullptr;
}

std::vector<std::string> names(const Graph& g, const std::vector<int>& ids) {
    std::vector<std::string> out;
    for (int i : ids) {
        out.push_back(g.nodes()[static_cast<size_t>(i)].name);
    }
    return out;
}

TEST(CouplingTest, ResNetResidualStagesAreOneGroup) {
    Graph g = build_zoo_model("resnet20", 10, {3, 32, 32});
    auto groups = channel_groups(g);
    // Stage 2's residual stream: the projection shortcut and every block's second conv.
    const ChannelGroup* s2 = find_group(groups, g, "layer2_0_down");
    ASSERT_NE(s2, nullptr);
    EXPECT_EQ(names(g, s2->producers),
              (std::vector<std::string>{"layer2_0_conv2", "layer2_0_down", "layer2_1_conv2",
                                        "layer2_2_conv2"}));
    EXPECT_EQ(names(g, s2->consumers),
              (std::vector<std::string>{"layer2_1_conv1", "layer2_2_conv1", "layer3_0_conv1",
                                        "layer3_0_down"}));
    EXPECT_EQ(s2->batchnorms.size(), 4u);
    EXPECT_TRUE(s2->prunable);
    // A block's inner conv is a group of its own with one consumer.
    const ChannelGroup* inner = find_group(groups, g, "layer1_0_conv1");
    EXPECT_EQ(names(g, inner->consumers), (std::vector<std::string>{"layer1_0_conv2"}));
    // The classifier's outputs are the model's outputs: never pruned.
    const ChannelGroup* fc = find_group(groups, g, "fc");
    EXPECT_FALSE(fc->prunable);
    EXPECT_EQ(fc->reason, "the model output");
    // The last stage feeds the classifier through GAP and flatten.
    const ChannelGroup* s3 = find_group(groups, g, "layer3_0_down");
    EXPECT_EQ(names(g, s3->consumers).back(), "fc");
}

TEST(CouplingTest, MobileNetDepthwiseJoinsItsExpansion) {
    Graph g = build_zoo_model("mobilenet_v2", 10, {3, 32, 32});
    auto groups = channel_groups(g);
    const ChannelGroup* e = find_group(groups, g, "block2_expand");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(names(g, e->depthwise), (std::vector<std::string>{"block2_dw"}));
    EXPECT_EQ(names(g, e->consumers), (std::vector<std::string>{"block2_project"}));
    EXPECT_EQ(e->batchnorms.size(), 2u);  // expand BN and depthwise BN
    // Projections with residual adds are coupled across blocks.
    const ChannelGroup* p = find_group(groups, g, "block3_project");
    EXPECT_EQ(names(g, p->producers),
              (std::vector<std::string>{"block2_project", "block3_project"}));
}

TEST(CouplingTest, VggLinearConsumerHasSpatialFactor) {
    Graph g = build_zoo_model("vgg16", 10, {3, 64, 64});
    auto groups = channel_groups(g);
    const ChannelGroup* last = find_group(groups, g, "conv13");
    ASSERT_EQ(names(g, last->consumers), (std::vector<std::string>{"fc1"}));
    EXPECT_EQ(last->consumer_spatial[0], 4);  // 512×2×2 flattened
    EXPECT_TRUE(find_group(groups, g, "fc1")->prunable);
}

TEST(CouplingTest, ConcatAndExcludePatternsBlockPruning) {
    ModelFile m = import_onnx((std::filesystem::path(POCKETFLOW_SOURCE_DIR) /
                               "tests/fixtures/onnx/tiny_mobile_opset14.onnx")
                                  .string());
    auto groups = channel_groups(m.graph);
    int blocked_by_concat = 0;
    for (const auto& gr : groups) {
        blocked_by_concat += gr.reason.rfind("concat", 0) == 0 ? 1 : 0;
    }
    EXPECT_GE(blocked_by_concat, 1);
    Graph r = build_zoo_model("resnet20", 10, {3, 32, 32});
    auto excluded = channel_groups(r, {"layer2_*"});
    EXPECT_FALSE(find_group(excluded, r, "layer2_1_conv1")->prunable);
    EXPECT_EQ(find_group(excluded, r, "layer2_1_conv1")->reason, "excluded by 'layer2_*'");
    EXPECT_TRUE(find_group(excluded, r, "layer3_1_conv1")->prunable);
}

/// Zeroing the dropped channels in the original equals removing them physically.
void check_equivalence(Graph g, const std::vector<int64_t>& shape, uint64_t seed) {
    torch::manual_seed(static_cast<int64_t>(seed));
    {
        torch::NoGradGuard no_grad;
        for (auto& n : g.nodes()) {
            if (n.op == Op::kBatchNorm2d) {
                n.buffers["running_mean"].uniform_(-0.3, 0.3);
                n.buffers["running_var"].uniform_(0.5, 1.5);
                n.params["bias"].uniform_(-0.3, 0.3);
            }
        }
    }
    auto groups = channel_groups(g);
    Graph zeroed = g.clone(), pruned = g.clone();
    std::mt19937_64 rng(seed);
    int pruned_groups = 0;
    for (const auto& group : groups) {
        if (!group.prunable) {
            continue;
        }
        std::vector<int64_t> all(static_cast<size_t>(group.channels));
        std::iota(all.begin(), all.end(), 0);
        std::shuffle(all.begin(), all.end(), rng);
        std::vector<int64_t> keep(all.begin(),
                                  all.begin() + std::max<int64_t>(1, group.channels / 2));
        std::sort(keep.begin(), keep.end());
        zero_group(zeroed, group, keep);
        prune_group(pruned, group, keep);
        ++pruned_groups;
    }
    ASSERT_GT(pruned_groups, 0);
    pruned.validate();
    EXPECT_LT(pruned.total_macs(), g.total_macs());
    torch::Tensor x = torch::randn({2, shape[0], shape[1], shape[2]});
    torch::Tensor a = run(zeroed, x), b = run(pruned, x);
    EXPECT_LE((a - b).abs().max().item<double>(),
              1e-5 * std::max(1.0, a.abs().max().item<double>()));
}

class EquivalenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EquivalenceTest, ZeroedEqualsPhysicallyPruned) {
    const std::string arch = GetParam();
    std::vector<int64_t> shape =
        arch == "lenet5" ? std::vector<int64_t>{1, 28, 28} : std::vector<int64_t>{3, 32, 32};
    check_equivalence(build_zoo_model(arch, 10, shape, 3), shape, 5);
}

INSTANTIATE_TEST_SUITE_P(Zoo, EquivalenceTest, ::testing::ValuesIn(zoo_names()));

TEST(EquivalenceTest, ImportedPyTorchModels) {
    for (const char* f : {"tiny_resnet_opset11.onnx", "tiny_mobile_opset14.onnx"}) {
        SCOPED_TRACE(f);
        ModelFile m = import_onnx(
            (std::filesystem::path(POCKETFLOW_SOURCE_DIR) / "tests/fixtures/onnx" / f).string());
        auto shape = m.graph.input_shape();
        check_equivalence(std::move(m.graph), shape, 9);
    }
}

TEST(CriteriaTest, ScoresRankTheObviousChannel) {
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    auto groups = channel_groups(g);
    const ChannelGroup* c1 = find_group(groups, g, "conv1");
    {
        torch::NoGradGuard no_grad;
        auto& w = g.nodes()[static_cast<size_t>(g.find("conv1"))].params["weight"];
        w.fill_(1.0);
        w[2].fill_(0.01);  // channel 2: the weakest, and the farthest from the others
    }
    EXPECT_EQ(channel_scores(g, *c1, "l1").argmin().item<int64_t>(), 2);
    EXPECT_EQ(channel_scores(g, *c1, "l2").argmin().item<int64_t>(), 2);
    // FPGM: identical filters sit at the geometric median and are redundant; the odd one is kept.
    EXPECT_EQ(channel_scores(g, *c1, "fpgm").argmax().item<int64_t>(), 2);
    auto keep = top_channels(channel_scores(g, *c1, "l1"), 5);
    EXPECT_EQ(keep, (std::vector<int64_t>{0, 1, 3, 4, 5}));
    testing::expect_error<ConfigError>([&] { channel_scores(g, *c1, "bn_scale"); },
                                       "needs a BatchNorm");
    Graph r = build_zoo_model("resnet20", 10, {3, 32, 32});
    auto rg = channel_groups(r);
    const ChannelGroup* inner = find_group(rg, r, "layer1_0_conv1");
    {
        torch::NoGradGuard no_grad;
        r.nodes()[static_cast<size_t>(r.find("layer1_0_conv1_bn"))].params["weight"][7].fill_(0.0);
    }
    EXPECT_EQ(channel_scores(r, *inner, "bn_scale").argmin().item<int64_t>(), 7);
}

TEST(LassoTest, HitsTheExactCountAndFindsTheSupport) {
    torch::manual_seed(0);
    // y = Z β* with β* supported on {1, 4, 6}; LASSO must recover exactly those for count 3.
    auto z = torch::randn({200, 8}, torch::kDouble);
    auto beta_true = torch::zeros({8}, torch::kDouble);
    beta_true[1] = 1.0;
    beta_true[4] = 2.0;
    beta_true[6] = 0.7;
    auto y = z.matmul(beta_true);
    auto gram = z.t().matmul(z), target = z.t().matmul(y);
    EXPECT_EQ(lasso_select(gram, target, 3), (std::vector<int64_t>{1, 4, 6}));
    for (int64_t count = 1; count <= 8; ++count) {
        torch::Tensor beta;
        auto keep = lasso_select(gram, target, count, &beta);
        EXPECT_EQ(static_cast<int64_t>(keep.size()), count);
        EXPECT_TRUE(std::is_sorted(keep.begin(), keep.end()));
    }
    EXPECT_THROW(lasso_select(gram, target, 9), Error);
}

TEST(BudgetTest, TargetIsMetWithChannelBlocks) {
    Graph g = build_zoo_model("resnet20", 10, {1, 28, 28});
    std::vector<std::string> first_conv = {"conv1"};
    auto groups = channel_groups(g, first_conv);
    const double total = static_cast<double>(g.total_macs());
    for (int64_t multiple : {1, 8, 16}) {
        for (double target : {0.5, 0.6}) {
            SCOPED_TRACE(::testing::Message() << "multiple " << multiple << " target " << target);
            RatioFit fit = ratios_for_target(g, groups, target, multiple);
            double kept =
                static_cast<double>(macs_with_ratios(g, groups, fit.ratios, multiple)) / total;
            EXPECT_NEAR(kept, fit.kept_fraction, 1e-12);
            EXPECT_NEAR(kept, target, 0.02);
            size_t r = 0;
            for (const auto& group : groups) {
                if (!group.prunable) {
                    continue;
                }
                int64_t k = kept_channels(group.channels, fit.ratios[r++], multiple);
                EXPECT_TRUE(k % multiple == 0 || k == group.channels) << group.name << ": " << k;
            }
        }
    }
    // A uniform ratio alone cannot reach 50% with blocks of 16 (stage 1 has 16 channels): the
    // refinement takes blocks from the widest groups.
    RatioFit fit = ratios_for_target(g, groups, 0.5, 16);
    EXPECT_GT(fit.refined, 0u);
    // An unreachable target stops at the smallest allowed sizes.
    RatioFit floor = ratios_for_target(g, groups, 0.05, 16);
    EXPECT_GT(floor.kept_fraction, 0.3);
}

TEST(BudgetTest, ShapeOnlyMacsMatchSurgery) {
    // The shape-only count must equal the MACs of the physically pruned graph, for plain,
    // residual, depthwise (MobileNet) and flatten→linear (LeNet, VGG) coupling.
    std::mt19937_64 rng(3);
    for (const char* arch : {"lenet5", "resnet20", "mobilenet_v2", "vgg16"}) {
        SCOPED_TRACE(arch);
        Graph g = build_zoo_model(arch, 10, {3, 32, 32});
        auto groups = channel_groups(g);
        PrunedMacs macs(g, groups);
        EXPECT_EQ(macs.total(), g.total_macs());
        std::vector<int64_t> kept;
        Graph pruned = g.clone();
        for (const auto& group : groups) {
            if (!group.prunable) {
                continue;
            }
            int64_t k = std::uniform_int_distribution<int64_t>(1, group.channels)(rng);
            kept.push_back(k);
            std::vector<int64_t> keep(static_cast<size_t>(k));
            std::iota(keep.begin(), keep.end(), 0);
            prune_group(pruned, group, keep);
        }
        ASSERT_FALSE(kept.empty());
        EXPECT_EQ(macs.at(kept), pruned.total_macs());
        EXPECT_THROW(macs.at({}), Error);
    }
}

TEST(BudgetTest, MacsFollowRatios) {
    Graph g = build_zoo_model("resnet56", 10, {3, 32, 32});
    auto groups = channel_groups(g);
    size_t prunable = std::count_if(groups.begin(), groups.end(),
                                    [](const ChannelGroup& gr) { return gr.prunable; });
    int64_t full = macs_with_ratios(g, groups, std::vector<double>(prunable, 1.0));
    EXPECT_EQ(full, g.total_macs());
    int64_t half = macs_with_ratios(g, groups, std::vector<double>(prunable, 0.5));
    EXPECT_LT(half, full * 0.6);
    EXPECT_GT(half, full * 0.2);
    EXPECT_EQ(kept_channels(16, 0.01), 1);
    EXPECT_EQ(kept_channels(16, 0.5), 8);
    EXPECT_EQ(kept_channels(64, 0.6, 8), 40);  // 38.4 → 40
    EXPECT_EQ(kept_channels(64, 0.05, 8), 8);  // never below one block
    EXPECT_EQ(kept_channels(6, 0.5, 8), 6);    // a layer no wider than a block stays whole
    EXPECT_EQ(kept_channels(16, 0.3, 16), 16);
    EXPECT_EQ(kept_channels(24, 0.3, 16), 16);  // 7.2 → one block
    EXPECT_EQ(kept_channels(24, 0.9, 16), 24);  // 21.6 → 32, capped at the group
    int64_t coarse = macs_with_ratios(g, groups, std::vector<double>(prunable, 0.6), 8);
    EXPECT_GT(coarse, 0);
    EXPECT_LE(coarse, full);
}

}  // namespace
}  // namespace pocketflow

namespace pocketflow {
namespace {

/// Runs the channel_pruning learner on a trained tiny ResNet with synthetic data.
struct PruneRun {
    Job job;
    DataBundle data;
    std::shared_ptr<Model> base;
    testing::TempDir dir;

    explicit PruneRun(const std::string& stage_yaml,
                      const std::string& model_yaml = "{arch: resnet20}") {
        job = parse_job("name: p\nmodel: " + model_yaml +
                            "\ndata: {dataset: synthetic, batch_size: 32, "
                            "synthetic: {train: 256, test: 64, classes: 4, shape: [1, 12, 12]}}\n"
                            "train: {epochs: 2, optimizer: {lr: 0.05}}\npipeline: [" +
                            stage_yaml + "]\n",
                        "p.yaml");
        data = load_data(job.data, 1);
        torch::manual_seed(0);
        base = make_model(job, data.input_shape, data.num_classes, data.mean, data.std);
        Trainer t(job.train, nullptr, "base");
        t.fit(*base, data, job.data, 1);
    }

    std::shared_ptr<Model> prune(nlohmann::json* summary = nullptr) {
        RunDir run(dir.path() / std::to_string(counter++));
        auto learner = builtin_registry().get("channel_pruning").create(job.pipeline[0], job);
        RunContext ctx{job,
                       job.pipeline[0],
                       0,
                       std::make_shared<Model>(base->graph().clone(), base->meta()),
                       data,
                       run,
                       false,
                       0,
                       std::make_shared<const Model>(base->graph().clone(), base->meta())};
        nlohmann::json s = learner->run(ctx);
        if (summary) {
            *summary = s;
        }
        return ctx.model;
    }

    double output_error(Model& pruned) {
        auto loader = data.test_loader(job.data);
        loader->start_epoch(0);
        auto batch = loader->next();
        base->eval();
        pruned.eval();
        torch::NoGradGuard no_grad;
        return (base->forward(batch->images) - pruned.forward(batch->images))
            .pow(2)
            .mean()
            .item<double>();
    }

    int counter = 0;
};

TEST(ChannelPruningTest, MeetsFlopsTargetWithinTwoPercent) {
    PruneRun p("{learner: channel_pruning, flops_target: 0.5, criterion: l1, finetune_epochs: 0}");
    nlohmann::json s;
    auto m = p.prune(&s);
    EXPECT_NEAR(s["macs_kept"].get<double>(), 0.5, 0.02);
    EXPECT_EQ(m->graph().total_macs(), s["macs_after"].get<int64_t>());
    EXPECT_LT(m->graph().total_params(), p.base->graph().total_params());
    EXPECT_FALSE(s["layers"].empty());
}

TEST(ChannelPruningTest, ReconstructionLowersTheOutputError) {
    PruneRun with(
        "{learner: channel_pruning, flops_target: 0.4, criterion: lasso, finetune_epochs: 0, "
        "samples: 64}");
    PruneRun without(
        "{learner: channel_pruning, flops_target: 0.4, criterion: lasso, finetune_epochs: 0, "
        "samples: 64, reconstruct: false}");
    auto a = with.prune();
    auto b = without.prune();
    EXPECT_EQ(a->graph().total_macs(), b->graph().total_macs());
    EXPECT_LT(with.output_error(*a), 0.8 * without.output_error(*b));
}

TEST(ChannelPruningTest, LassoPrunesALayerThatReadsAndWritesTheSameChannels) {
    // y = x + conv_a(x), as in RepVGG's training blocks: conv_a reads and writes the same group of
    // channels, so its reconstruction must target only the output rows the cut kept.
    testing::TempDir models;
    Graph g({1, 12, 12});
    int x = g.add_unary("relu0", Op::kReLU, g.add_conv("conv0", 0, 1, 8, 3, 1, 1, 1, true));
    int y = g.add_binary("add", Op::kAdd, x, g.add_conv("conv_a", x, 8, 8, 3, 1, 1, 1, true));
    y = g.add_unary("relu1", Op::kReLU, y);
    y = g.add_unary("relu2", Op::kReLU, g.add_conv("conv_b", y, 8, 8, 3, 1, 1, 1, true));
    y = g.add_unary("flat", Op::kFlatten, g.add_unary("pool", Op::kGlobalAvgPool, y));
    g.set_output(g.add_linear("fc", y, 8, 4));
    init_weights(g, 3);
    save_model(models.file("block.pfm"), g, {});
    PruneRun p(
        "{learner: channel_pruning, flops_target: 0.6, criterion: lasso, keep_first_conv: false, "
        "channel_multiple: 1, finetune_epochs: 0, samples: 32}",
        "{path: " + models.file("block.pfm") + "}");
    nlohmann::json s;
    auto m = p.prune(&s);
    EXPECT_LE(s["macs_kept"].get<double>(), 0.62);
    const Node& a = m->graph().nodes()[static_cast<size_t>(m->graph().find("conv_a"))];
    EXPECT_EQ(a.params.at("weight").size(0), a.params.at("weight").size(1));  // rows = columns
    EXPECT_LT(a.params.at("weight").size(0), 8);
    EXPECT_TRUE(std::isfinite(p.output_error(*m)));
}

TEST(ChannelPruningTest, ListRatiosAndErrors) {
    PruneRun p(
        "{learner: channel_pruning, ratios: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, "
        "0.5], "
        "criterion: fpgm, finetune_epochs: 0}");
    EXPECT_LT(p.prune()->graph().total_macs(), p.base->graph().total_macs());
    PruneRun wrong("{learner: channel_pruning, ratios: [0.5, 0.5], finetune_epochs: 0}");
    testing::expect_error<ConfigError>(
        [&] { wrong.prune(); },
        "failed to prune with 2 ratios: the model has 11 prunable channel groups");
    PruneRun pattern(
        "{learner: channel_pruning, flops_target: 0.5, exclude: [nothing_*], finetune_epochs: 0}");
    testing::expect_error<ConfigError>([&] { pattern.prune(); },
                                       "'nothing_*': it matches no layer");
}

}  // namespace
}  // namespace pocketflow
