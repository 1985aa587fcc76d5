// SPDX-License-Identifier: Apache-2.0
#include "discr_channel_pruning/discr_channel_pruning.h"

#include <random>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/prune.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

/// Whether every node after `cut` reads only `cut` or later nodes.
bool is_cut(const Graph& g, int cut) {
    for (size_t j = static_cast<size_t>(cut) + 1; j < g.nodes().size(); ++j) {
        for (int in : g.nodes()[j].inputs) {
            if (in < cut) {
                return false;
            }
        }
    }
    return true;
}

TEST(DcpTest, AuxiliaryHeadsAttachAtBlockOutputs) {
    for (const char* arch : {"resnet20", "resnet56", "mobilenet_v2", "vgg16"}) {
        SCOPED_TRACE(arch);
        Graph g = build_zoo_model(arch, 10, {3, 32, 32});
        auto shapes = g.infer_shapes();
        std::vector<int> cuts = cut_points(g, 3);
        ASSERT_EQ(cuts.size(), 3u);
        EXPECT_TRUE(std::is_sorted(cuts.begin(), cuts.end()));
        int convs = 0;
        for (const auto& n : g.nodes()) {
            convs += n.op == Op::kConv2d;
        }
        std::vector<int> before;
        for (int c : cuts) {
            EXPECT_TRUE(is_cut(g, c)) << g.nodes()[static_cast<size_t>(c)].name;
            EXPECT_EQ(shapes[static_cast<size_t>(c)].size(), 3u);
            int n = 0;
            for (int i = 0; i <= c; ++i) {
                n += g.nodes()[static_cast<size_t>(i)].op == Op::kConv2d;
            }
            before.push_back(n);
        }
        // Roughly a quarter of the convs apart.
        for (size_t p = 0; p < cuts.size(); ++p) {
            EXPECT_NEAR(before[p], convs * (p + 1.0) / 4.0, convs / 8.0 + 1.5);
        }
    }
    // In a residual network the heads sit on block outputs, never inside a block.
    Graph r = build_zoo_model("resnet20", 10, {1, 28, 28});
    for (int c : cut_points(r, 3)) {
        const std::string& name = r.nodes()[static_cast<size_t>(c)].name;
        EXPECT_TRUE(name.find("_add") != std::string::npos ||
                    name.find("_relu") != std::string::npos)
            << name;
        EXPECT_EQ(name.find("conv1"), std::string::npos) << name;
    }
    // Imported graphs (PyTorch exports) too; a tiny one has room for fewer heads.
    for (const char* file : {"tiny_resnet_opset13.onnx", "tiny_mobile_opset17.onnx"}) {
        SCOPED_TRACE(file);
        ModelFile f =
            import_onnx(std::string(POCKETFLOW_SOURCE_DIR) + "/tests/fixtures/onnx/" + file, {});
        std::vector<int> cuts = cut_points(f.graph, 2);
        EXPECT_FALSE(cuts.empty());
        for (int c : cuts) {
            EXPECT_TRUE(is_cut(f.graph, c));
        }
    }
}

/// Images whose channels are independent uniform noise (the pattern-based synthetic data
/// correlates them), with random labels.
class NoiseDataset : public Dataset {
public:
    explicit NoiseDataset(std::vector<int64_t> shape) : shape_(std::move(shape)) {}
    int64_t size() const override { return 256; }
    Image get(int64_t index) const override {
        std::mt19937 rng(static_cast<uint32_t>(index + 1));
        std::uniform_int_distribution<int> pixel(0, 255);
        Image im{shape_[0], shape_[1], shape_[2], {}};
        im.pixels.resize(static_cast<size_t>(shape_[0] * shape_[1] * shape_[2]));
        for (auto& p : im.pixels) {
            p = static_cast<uint8_t>(pixel(rng));
        }
        return im;
    }
    int64_t label(int64_t index) const override { return index % 3; }
    int64_t num_classes() const override { return 3; }
    std::vector<int64_t> shape() const override { return shape_; }

private:
    std::vector<int64_t> shape_;
};

TEST(DcpTest, GreedySelectionPicksTheChannelsTheConsumerUses) {
    // Input of 8 independent noise channels → a copying 1×1 conv (the group's producer) → a 1×1
    // consumer that reads only channels 2 and 5 (and, weakly, 6) → pooling → linear. The
    // reconstruction gradient points at the channels the consumer uses, strongest first.
    Graph g({8, 4, 4});
    int a = g.add_conv("copy", 0, 8, 8, 1, 1, 0, 1, false);
    int b = g.add_conv("consumer", a, 8, 4, 1, 1, 0, 1, false);
    int p = g.add_pool("gap", Op::kGlobalAvgPool, b, 1, 1, 0);
    int f = g.add_unary("flat", Op::kFlatten, p);
    g.nodes()[static_cast<size_t>(f)].attrs.axis = 1;
    int l = g.add_linear("fc", f, 4, 3);
    g.set_output(l);
    {
        torch::NoGradGuard no_grad;
        g.nodes()[static_cast<size_t>(a)].params.at("weight") = torch::eye(8).reshape({8, 8, 1, 1});
        torch::Tensor w = torch::zeros({4, 8, 1, 1});
        w.index_put_({torch::indexing::Slice(), 2},
                     torch::tensor({1.0, -0.5, 0.8, 0.3}).reshape({4, 1, 1}));
        w.index_put_({torch::indexing::Slice(), 5},
                     torch::tensor({-0.7, 0.9, 0.4, -1.0}).reshape({4, 1, 1}));
        w.index_put_({torch::indexing::Slice(), 6},
                     torch::tensor({0.1, 0.05, -0.1, 0.05}).reshape({4, 1, 1}));
        g.nodes()[static_cast<size_t>(b)].params.at("weight") = w;
        g.nodes()[static_cast<size_t>(l)].params.at("weight").uniform_(-0.1, 0.1);
    }
    auto groups = channel_groups(g);
    const ChannelGroup* group = nullptr;
    for (const auto& gr : groups) {
        if (!gr.producers.empty() && gr.producers[0] == a) {
            group = &gr;
        }
    }
    ASSERT_NE(group, nullptr);
    ASSERT_TRUE(group->prunable) << group->reason;
    LoaderOptions lo;
    lo.batch_size = 32;
    lo.mean = std::vector<double>(8, 0.5);
    lo.std = std::vector<double>(8, 0.25);
    std::vector<int64_t> indices(256);
    std::iota(indices.begin(), indices.end(), 0);
    Loader data(std::make_shared<NoiseDataset>(std::vector<int64_t>{8, 4, 4}), indices, lo);
    learners::DcpOptions options;
    options.layer_steps = 3;
    options.aux_weight = 0.0;  // reconstruction alone: the answer is known
    for (int64_t keep : {1, 2, 3}) {
        SCOPED_TRACE(keep);
        Model model(g.clone(), {});
        Model reference(g.clone(), {});
        reference.eval();
        std::vector<int64_t> kept =
            learners::dcp_select(model, reference, *group, keep, {nullptr, -1}, data, options);
        std::vector<int64_t> expected = keep == 1   ? std::vector<int64_t>{5}
                                        : keep == 2 ? std::vector<int64_t>{2, 5}
                                                    : std::vector<int64_t>{2, 5, 6};
        EXPECT_EQ(kept, expected);
        // The dropped channels' consumer weights are zero: pruning them changes nothing.
        torch::Tensor w = model.graph().nodes()[static_cast<size_t>(b)].params.at("weight");
        for (int64_t c = 0; c < 8; ++c) {
            if (std::find(kept.begin(), kept.end(), c) == kept.end()) {
                EXPECT_EQ(w.select(1, c).abs().sum().item<double>(), 0.0) << c;
            }
        }
    }
    Model model(g.clone(), {});
    Model reference(g.clone(), {});
    EXPECT_THROW(learners::dcp_select(model, reference, *group, 9, {nullptr, -1}, data, options),
                 Error);
}

TEST(DcpTest, PrunesToTheBudgetAndRunsLikeItsMaskedSelf) {
    Job job = parse_job(
        "name: d\nmodel: {arch: resnet20}\ndata: {dataset: synthetic, batch_size: 32, "
        "synthetic: {train: 256, test: 64, classes: 4, shape: [1, 12, 12]}}\n"
        "train: {epochs: 1, optimizer: {lr: 0.05}}\npipeline: [{learner: discr_channel_pruning, "
        "flops_target: 0.5, target: avx2, samples: 32, batch_size: 16, block_steps: 4, "
        "layer_steps: 1, finetune_epochs: 0}]\n",
        "d.yaml");
    DataBundle data = load_data(job.data, 1);
    torch::manual_seed(0);
    auto base = make_model(job, data.input_shape, data.num_classes, data.mean, data.std);
    Trainer t(job.train, nullptr, "base");
    t.fit(*base, data, job.data, 1);
    testing::TempDir dir;
    RunDir run(dir.path());
    auto learner = builtin_registry().get("discr_channel_pruning").create(job.pipeline[0], job);
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
    EXPECT_NEAR(s["macs_kept"].get<double>(), 0.5, 0.02);
    EXPECT_EQ(ctx.model->graph().total_macs(), s["macs_after"].get<int64_t>());
    EXPECT_EQ(s["auxiliary"].size(), 3u);
    EXPECT_EQ(s["channel_multiple"], 8);
    for (const auto& row : s["layers"]) {
        const int64_t in = row["in_after"].get<int64_t>();
        EXPECT_TRUE(in % 8 == 0 || in == row["in_before"].get<int64_t>() || in == 1) << row;
    }
    // The pruned model is a valid graph that exports and re-imports with the same outputs.
    std::string path = dir.file("dcp.onnx");
    export_onnx(path, ctx.model->graph(), ctx.model->meta());
    ModelFile back = import_onnx(path, {});
    Model again(std::move(back.graph), back.meta);
    ctx.model->eval();
    again.eval();
    torch::NoGradGuard no_grad;
    torch::Tensor x = torch::randn({4, 1, 12, 12});
    EXPECT_LT((ctx.model->forward(x) - again.forward(x)).abs().max().item<double>(), 1e-4);
    // Budget errors are the shared ones.
    Job bad = parse_job(
        "name: d\nmodel: {arch: resnet20}\ndata: {dataset: synthetic}\n"
        "pipeline: [{learner: discr_channel_pruning, stages: 3}]\n",
        "bad.yaml");
    testing::expect_error<ConfigError>(
        [&] { builtin_registry().get("discr_channel_pruning").create(bad.pipeline[0], bad); },
        "give flops_target");
}

}  // namespace
}  // namespace pocketflow
