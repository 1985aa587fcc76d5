// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/graph.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <fstream>
#include <thread>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/model.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "../../src/graph/onednn_conv.h"
#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace F = torch::nn::functional;
using testing::expect_error;

class SeededTest : public ::testing::Test {
protected:
    void SetUp() override { torch::manual_seed(0); }
};

/// Runs `graph` and a reference function on the same input; compares outputs and the gradients of
/// the input and of every parameter.
void check_against_reference(
    Graph graph,
    const std::vector<int64_t>& input_shape,
    const std::function<torch::Tensor(const torch::Tensor&, const Graph&)>& reference,
    bool training = true) {
    torch::Tensor x = torch::randn(input_shape);
    Model model(graph.clone(), {});
    if (training) {
        model.train();
    } else {
        model.eval();
    }
    Graph ref_graph = graph.clone();
    for (auto& n : ref_graph.nodes()) {
        for (auto& [k, t] : n.params) {
            t.set_requires_grad(true);
        }
    }
    torch::Tensor x1 = x.clone().set_requires_grad(true);
    torch::Tensor x2 = x.clone().set_requires_grad(true);
    torch::Tensor y1 = model.forward(x1);
    torch::Tensor y2 = reference(x2, ref_graph);
    ASSERT_EQ(y1.sizes(), y2.sizes());
    EXPECT_TRUE(torch::allclose(y1, y2, 1e-5, 1e-5)) << (y1 - y2).abs().max();
    torch::Tensor w = torch::randn(y1.sizes());
    (y1 * w).sum().backward();
    (y2 * w).sum().backward();
    EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-4, 1e-5))
        << (x1.grad() - x2.grad()).abs().max();
    for (size_t i = 0; i < graph.nodes().size(); ++i) {
        for (const auto& [k, t] : model.graph().nodes()[i].params) {
            const auto& ref = ref_graph.nodes()[i].params.at(k);
            ASSERT_TRUE(t.grad().defined()) << graph.nodes()[i].name << "." << k;
            EXPECT_TRUE(torch::allclose(t.grad(), ref.grad(), 1e-4, 1e-5))
                << graph.nodes()[i].name << "." << k;
        }
    }
}

/// A graph input → op → flatten → linear so that every op's output is a class vector.
Graph single_op(const std::function<int(Graph&)>& add_op, const std::vector<int64_t>& shape) {
    Graph g(shape);
    int x = add_op(g);
    g.set_output(x);
    init_weights(g, 3);
    return g;
}

TEST_F(SeededTest, Conv2dMatchesReference) {
    for (int64_t groups : {1, 2, 4}) {
        Graph g = single_op(
            [&](Graph& gr) { return gr.add_conv("conv", 0, 4, 8, 3, 2, 1, groups, true); },
            {4, 9, 9});
        g.nodes()[1].params["bias"].normal_();
        g.nodes()[1].attrs.dilation = {2, 1};
        check_against_reference(g, {2, 4, 9, 9}, [&](const torch::Tensor& x, const Graph& r) {
            const auto& p = r.nodes()[1].params;
            return F::conv2d(x, p.at("weight"),
                             F::Conv2dFuncOptions()
                                 .bias(p.at("bias"))
                                 .stride(2)
                                 .padding(1)
                                 .dilation({2, 1})
                                 .groups(groups));
        });
    }
}

TEST_F(SeededTest, BatchNormTrainAndEvalMatchReference) {
    for (bool training : {true, false}) {
        Graph g = single_op([](Graph& gr) { return gr.add_bn("bn", 0, 3); }, {3, 5, 5});
        g.nodes()[1].params["weight"].uniform_(0.5, 1.5);
        g.nodes()[1].params["bias"].normal_();
        g.nodes()[1].buffers["running_mean"].normal_();
        g.nodes()[1].buffers["running_var"].uniform_(0.5, 2);
        check_against_reference(
            g, {4, 3, 5, 5},
            [&](const torch::Tensor& x, const Graph& r) {
                const auto& n = r.nodes()[1];
                auto rm = n.buffers.at("running_mean").clone();
                auto rv = n.buffers.at("running_var").clone();
                return F::batch_norm(x, rm, rv,
                                     F::BatchNormFuncOptions()
                                         .weight(n.params.at("weight"))
                                         .bias(n.params.at("bias"))
                                         .training(training)
                                         .momentum(0.1)
                                         .eps(1e-5));
            },
            training);
    }
}

TEST_F(SeededTest, ElementwiseOpsMatchReference) {
    struct Case {
        Op op;
        std::function<torch::Tensor(const torch::Tensor&)> ref;
    };
    std::vector<Case> cases = {
        {Op::kReLU, [](const torch::Tensor& x) { return torch::relu(x); }},
        {Op::kSigmoid, [](const torch::Tensor& x) { return torch::sigmoid(x); }},
        {Op::kHardSwish, [](const torch::Tensor& x) { return x * F::relu6(x + 3) / 6; }},
        {Op::kIdentity, [](const torch::Tensor& x) { return x; }},
        {Op::kGlobalAvgPool,
         [](const torch::Tensor& x) {
             return F::adaptive_avg_pool2d(x, F::AdaptiveAvgPool2dFuncOptions(1));
         }},
        {Op::kFlatten, [](const torch::Tensor& x) { return torch::flatten(x, 1); }},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(op_name(c.op));
        Graph g = single_op([&](Graph& gr) { return gr.add_unary("op", c.op, 0); }, {3, 4, 4});
        check_against_reference(
            g, {2, 3, 4, 4}, [&](const torch::Tensor& x, const Graph&) { return c.ref(x); }, true);
    }
}

TEST_F(SeededTest, ClipAndRelu6MatchReference) {
    Graph g = single_op([](Graph& gr) { return gr.add_clip("relu6", 0, 0.0, 6.0); }, {2, 3, 3});
    check_against_reference(g, {2, 2, 3, 3},
                            [](const torch::Tensor& x, const Graph&) { return F::relu6(x); });
    Graph h = single_op([](Graph& gr) { return gr.add_clip("clip", 0, -0.5, 0.5); }, {2, 3, 3});
    check_against_reference(h, {2, 2, 3, 3}, [](const torch::Tensor& x, const Graph&) {
        return torch::clamp(x, -0.5, 0.5);
    });
}

TEST_F(SeededTest, BinaryOpsAndConcatMatchReference) {
    Graph g({4, 3, 3});
    int a = g.add_conv("a", 0, 4, 4, 1, 1, 0);
    int b = g.add_conv("b", 0, 4, 4, 1, 1, 0);
    int s = g.add_binary("sum", Op::kAdd, a, b);
    int m = g.add_binary("prod", Op::kMul, s, a);
    Node cat;
    cat.name = "cat";
    cat.op = Op::kConcat;
    cat.inputs = {m, b};
    g.add(cat);
    init_weights(g, 1);
    check_against_reference(g, {2, 4, 3, 3}, [](const torch::Tensor& x, const Graph& r) {
        auto ya = F::conv2d(x, r.nodes()[1].params.at("weight"));
        auto yb = F::conv2d(x, r.nodes()[2].params.at("weight"));
        return torch::cat({(ya + yb) * ya, yb}, 1);
    });
}

TEST_F(SeededTest, PoolsMatchReference) {
    Graph g = single_op([](Graph& gr) { return gr.add_pool("max", Op::kMaxPool, 0, 3, 2, 1); },
                        {2, 7, 7});
    check_against_reference(g, {2, 2, 7, 7}, [](const torch::Tensor& x, const Graph&) {
        return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(2).padding(1));
    });
    Graph h = single_op([](Graph& gr) { return gr.add_pool("avg", Op::kAvgPool, 0, 2, 2, 0); },
                        {2, 7, 7});
    h.nodes()[1].attrs.ceil_mode = true;
    check_against_reference(h, {2, 2, 7, 7}, [](const torch::Tensor& x, const Graph&) {
        return F::avg_pool2d(x, F::AvgPool2dFuncOptions(2).stride(2).ceil_mode(true));
    });
    EXPECT_EQ(h.infer_shapes()[1], (std::vector<int64_t>{2, 4, 4}));
}

TEST_F(SeededTest, LinearReshapeDropoutMatchReference) {
    Graph g({2, 3, 4});
    Node r;
    r.name = "reshape";
    r.op = Op::kReshape;
    r.inputs = {0};
    r.attrs.shape = {-1};
    int x = g.add(r);
    x = g.add_linear("fc", x, 24, 5);
    g.add_dropout("drop", x, 0.3);
    init_weights(g, 2);
    // Dropout in eval mode is the identity; in training, its mask is random (checked separately).
    check_against_reference(
        g, {3, 2, 3, 4},
        [](const torch::Tensor& in, const Graph& ref) {
            return F::linear(in.reshape({3, 24}), ref.nodes()[2].params.at("weight"),
                             ref.nodes()[2].params.at("bias"));
        },
        false);
    Model m(g.clone(), {});
    m.train();
    auto y = m.forward(torch::ones({64, 2, 3, 4}));
    double zero_fraction = (y == 0).to(torch::kFloat).mean().item<double>();
    EXPECT_NEAR(zero_fraction, 0.3, 0.08);
}

TEST(ZooTest, MacsMatchPublishedCounts) {
    struct Case {
        const char* arch;
        std::vector<int64_t> shape;
        int64_t classes;
        double macs;
    };
    const Case cases[] = {
        {"resnet20", {3, 32, 32}, 10, 40.81e6},
        {"resnet56", {3, 32, 32}, 10, 125.75e6},
        {"resnet18", {3, 224, 224}, 1000, 1.814e9},
        {"resnet50", {3, 224, 224}, 1000, 4.089e9},
        {"mobilenet_v1", {3, 224, 224}, 1000, 569e6},
        {"mobilenet_v2", {3, 224, 224}, 1000, 300.77e6},
        {"vgg16", {3, 224, 224}, 1000, 15.47e9},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.arch);
        Graph g = build_zoo_model(c.arch, c.classes, c.shape);
        EXPECT_NEAR(static_cast<double>(g.total_macs()) / c.macs, 1.0, 0.01) << g.total_macs();
    }
}

TEST(ZooTest, EveryModelRunsOnSmallInputs) {
    torch::manual_seed(0);
    for (const auto& arch : zoo_names()) {
        SCOPED_TRACE(arch);
        std::vector<int64_t> shape = {3, 32, 32};
        Graph g = build_zoo_model(arch, 7, shape);
        EXPECT_EQ(g.num_classes(), 7);
        Model m(std::move(g), {});
        m.eval();
        torch::NoGradGuard no_grad;
        auto y = m.forward(torch::randn({2, 3, 32, 32}));
        EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 7}));
        EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    }
    // Deeper CIFAR ResNets (6n+2 layers) have strictly more parameters and MACs.
    int64_t previous_params = 0, previous_macs = 0;
    for (const char* arch : {"resnet20", "resnet32", "resnet44", "resnet56"}) {
        Graph g = build_zoo_model(arch, 10, {3, 32, 32});
        EXPECT_GT(g.total_params(), previous_params) << arch;
        EXPECT_GT(g.total_macs(), previous_macs) << arch;
        previous_params = g.total_params();
        previous_macs = g.total_macs();
    }
}

/// Gives every BN random statistics and affine parameters, so folding them is really tested.
void randomize_batch_norms(Graph& g) {
    for (auto& n : g.nodes()) {
        if (n.op == Op::kBatchNorm2d) {
            torch::NoGradGuard no_grad;
            n.params.at("weight").uniform_(0.5, 1.5);
            n.params.at("bias").normal_(0.0, 0.2);
            n.buffers.at("running_mean").normal_(0.0, 0.2);
            n.buffers.at("running_var").uniform_(0.5, 2.0);
        }
    }
}

TEST(InferenceTest, FoldedBatchNormAndInPlaceForwardMatchTheReference) {
    torch::manual_seed(0);
    for (const auto& arch : zoo_names()) {
        SCOPED_TRACE(arch);
        Graph g = build_zoo_model(arch, 7, {3, 32, 32});
        randomize_batch_norms(g);
        // Reference: eval mode with autograd on, which takes at::conv2d and no in-place op.
        Model reference(g.clone(), {});
        reference.eval();
        torch::Tensor x = torch::randn({3, 3, 32, 32});
        const torch::Tensor x_before = x.clone();
        torch::Tensor expected = reference.forward(x).detach();
        Graph folded = fold_batch_norm(g);
        int64_t bns = std::count_if(folded.nodes().begin(), folded.nodes().end(),
                                    [](const Node& n) { return n.op == Op::kBatchNorm2d; });
        EXPECT_EQ(bns, 0) << "every BN of the zoo follows a conv read only by it";
        EXPECT_EQ(folded.total_macs(), g.total_macs());
        Model fast(std::move(folded), {});
        fast.eval();
        torch::NoGradGuard no_grad;
        for (const auto& input : {x, x.contiguous(at::MemoryFormat::ChannelsLast)}) {
            torch::Tensor y = fast.forward(input);
            double scale = std::max(1.0, expected.abs().max().item<double>());
            EXPECT_LT((y - expected).abs().max().item<double>() / scale, 1e-5);
            EXPECT_TRUE(torch::equal(input, x_before)) << "the caller's input was overwritten";
        }
        // Captured feature maps are not overwritten by later in-place ops.
        std::vector<int> capture;
        for (size_t i = 1; i < reference.graph().nodes().size(); ++i) {
            if (reference.graph().nodes()[i].op == Op::kReLU) {
                capture.push_back(static_cast<int>(i));
            }
        }
        std::vector<torch::Tensor> with_grad, without_grad;
        {
            at::AutoGradMode enable(true);
            reference.forward_capture(x, capture, with_grad);
        }
        reference.forward_capture(x, capture, without_grad);
        ASSERT_EQ(with_grad.size(), without_grad.size());
        for (size_t c = 0; c < capture.size(); ++c) {
            double scale = std::max(1.0, with_grad[c].abs().max().item<double>());
            EXPECT_LT((with_grad[c] - without_grad[c]).abs().max().item<double>() / scale, 1e-5)
                << reference.graph().nodes()[static_cast<size_t>(capture[c])].name;
        }
    }
}

TEST(InferenceTest, CachedConvolutionsFollowWeightUpdates) {
    // The inference path packs conv weights once; an in-place update (an optimizer step) or new
    // storage must repack them, or an evaluation after training would use stale weights.
    torch::manual_seed(2);
    Graph g = build_zoo_model("resnet20", 5, {3, 16, 16});
    Model m(g.clone(), {});
    m.eval();
    torch::Tensor x = torch::randn({2, 3, 16, 16});
    auto reference = [&] {
        Model fresh(m.graph().clone(), {});
        fresh.eval();
        at::AutoGradMode grad(true);  // LibTorch's own path, no cache
        return fresh.forward(x).detach();
    };
    // Relative error: after the updates below the untrained network's outputs reach 1e7, where
    // another summation order (the head's dot products vs BLAS) moves the last float bits.
    auto error = [](const torch::Tensor& y, const torch::Tensor& expected) {
        return (y - expected).abs().max().item<double>() /
               std::max(1.0, expected.abs().max().item<double>());
    };
    torch::NoGradGuard no_grad;
    EXPECT_LT(error(m.forward(x), reference()), 1e-5);
    m.graph()
        .nodes()[static_cast<size_t>(m.graph().find("layer1_0_conv1"))]
        .params.at("weight")
        .mul_(-2.0);
    EXPECT_LT(error(m.forward(x), reference()), 1e-5);
    for (auto& p : m.parameters()) {
        p.add_(0.01);
    }
    EXPECT_LT(error(m.forward(x), reference()), 1e-5);
    // Another batch size builds another primitive.
    torch::Tensor x5 = torch::randn({5, 3, 16, 16});
    Model fresh(m.graph().clone(), {});
    fresh.eval();
    torch::Tensor expected;
    {
        at::AutoGradMode grad(true);
        expected = fresh.forward(x5).detach();
    }
    EXPECT_LT(error(m.forward(x5), expected), 1e-5);
}

TEST(InferenceTest, ReusedOutputBuffersNeverOverwriteAResultStillHeld) {
    // Small conv outputs keep their buffer between calls; a result the caller still holds (the
    // network's output, or a view of it) must not be handed out again. Sixteen channels in and
    // out also take the blocked-layout kernels on AVX-512 (nChw16c = channels-last there).
    Graph g({16, 8, 8});
    int c0 = g.add_conv("conv0", 0, 16, 16, 3, 1, 1, 1, true);
    int c1 = g.add_conv("conv1", c0, 16, 16, 3, 1, 1, 1, true);
    g.set_output(c1);
    torch::manual_seed(6);
    for (int id : {c0, c1}) {
        g.nodes()[static_cast<size_t>(id)].params.at("weight").normal_(0, 0.2);
        g.nodes()[static_cast<size_t>(id)].params.at("bias").normal_(0, 0.2);
    }
    Model m(g.clone(), {});
    m.eval();
    auto reference = [&](const torch::Tensor& x) {
        at::AutoGradMode grad(true);  // LibTorch's own path
        return m.forward(x).detach();
    };
    auto error = [](const torch::Tensor& y, const torch::Tensor& expected) {
        return (y - expected).abs().max().item<double>() /
               std::max(1.0, expected.abs().max().item<double>());
    };
    torch::Tensor x1 = torch::randn({1, 16, 8, 8}), x2 = torch::randn({1, 16, 8, 8});
    const torch::Tensor e1 = reference(x1), e2 = reference(x2);
    torch::NoGradGuard no_grad;
    torch::Tensor y1 = m.forward(x1);
    EXPECT_LT(error(y1, e1), 1e-5);
    torch::Tensor y2 = m.forward(x2);
    EXPECT_FALSE(y2.is_alias_of(y1));
    EXPECT_LT(error(y1, e1), 1e-5) << "a held output was overwritten";
    EXPECT_LT(error(y2, e2), 1e-5);
    torch::Tensor view;
    {
        c10::InferenceMode inference;  // a view that does not keep its base alive
        view = y2.narrow(1, 0, 8);
    }
    y2.reset();
    torch::Tensor y3 = m.forward(x1);
    EXPECT_LT(error(view, e2.narrow(1, 0, 8)), 1e-5) << "a held view was overwritten";
    EXPECT_LT(error(y3, e1), 1e-5);
    view.reset();
    y1.reset();
    const void* previous = nullptr;
    for (int k = 0; k < 3; ++k) {  // nothing held: buffers are reused, results still right
        torch::Tensor y = m.forward(k % 2 == 0 ? x2 : x1);
        EXPECT_LT(error(y, (k % 2 == 0 ? e2 : e1)), 1e-5);
        if (ConvCache::available() && previous != nullptr) {
            EXPECT_EQ(y.data_ptr(), previous) << "a released output buffer was not reused";
        }
        previous = y.data_ptr();
    }
    // A result the caller marked for autograd is never handed out again.
    torch::Tensor marked = m.forward(x1);
    marked.requires_grad_(true);
    marked.reset();
    torch::Tensor after = m.forward(x2);
    EXPECT_FALSE(after.requires_grad());
    EXPECT_LT(error(after, e2), 1e-5);
}

TEST(InferenceTest, ConcurrentForwardsOnOneModelAreRight) {
    // Inference on one model from several threads at once, as a server does: the cached
    // convolutions keep per-node memory objects and output buffers, so they serve one forward at a
    // time and a concurrent one computes with LibTorch's path. Every result must be right.
    Model m(build_zoo_model("resnet20", 10, {3, 16, 16}), {});
    m.eval();
    torch::manual_seed(3);
    const int workers = 3;
    std::vector<torch::Tensor> x, expected;
    for (int t = 0; t < workers; ++t) {
        x.push_back(torch::randn({1 + t % 2, 3, 16, 16}));
        at::AutoGradMode grad(true);  // LibTorch's own path
        expected.push_back(m.forward(x.back()).detach());
    }
    std::atomic<int> wrong{0}, done{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < workers; ++t) {
        threads.emplace_back([&, t] {
            torch::NoGradGuard no_grad;  // grad mode is per thread
            for (int k = 0; k < 60; ++k) {
                const torch::Tensor y = m.forward(x[static_cast<size_t>(t)]);
                if (!torch::allclose(y, expected[static_cast<size_t>(t)], 1e-4, 1e-5)) {
                    ++wrong;
                }
                ++done;
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    EXPECT_EQ(done.load(), workers * 60);
    EXPECT_EQ(wrong.load(), 0) << "a forward saw another thread's buffers";
}

TEST(InferenceTest, FusedResidualAddNeverOverwritesAValueStillRead) {
    // x = conv0(input); y = conv2(input); c = conv1(y); p = relu(x) (a branch between the conv
    // and the Add); a = x + c; out = a + p. Accumulating c into x in place would hand p the sum.
    Graph g({4, 6, 6});
    int x = g.add_conv("conv0", 0, 4, 4, 3, 1, 1, 1, true);
    int y = g.add_conv("conv2", 0, 4, 4, 3, 1, 1, 1, true);
    int c = g.add_conv("conv1", y, 4, 4, 3, 1, 1, 1, true);
    int p = g.add_unary("branch", Op::kReLU, x);
    int a = g.add_binary("add", Op::kAdd, x, c);
    int out = g.add_binary("out", Op::kAdd, a, p);
    g.set_output(out);
    torch::manual_seed(4);
    for (int id : {x, y, c}) {
        g.nodes()[static_cast<size_t>(id)].params.at("weight").normal_(0, 0.3);
        g.nodes()[static_cast<size_t>(id)].params.at("bias").normal_(0, 0.3);
    }
    torch::Tensor in = torch::randn({2, 4, 6, 6});
    Model m(g.clone(), {});
    m.eval();
    torch::Tensor expected;
    {
        at::AutoGradMode grad(true);
        expected = m.forward(in).detach();
    }
    torch::NoGradGuard no_grad;
    EXPECT_LT((m.forward(in) - expected).abs().max().item<double>(), 1e-5);
}

TEST(InferenceTest, FusedClipMatchesTheReference) {
    // conv -> Clip(0, 6) (ReLU6), conv -> Clip(-0.25, 0.5), and a Clip whose conv has a second
    // reader (not fused): the inference path applies the first two in the primitive.
    Graph g({4, 9, 9});
    int c1 = g.add_conv("c1", 0, 4, 8, 3, 1, 1, 1, true);
    int r6 = g.add_clip("relu6", c1, 0.0, 6.0);
    int c2 = g.add_conv("c2", r6, 8, 8, 3, 1, 1, 1, true);
    int clip = g.add_clip("clip", c2, -0.25, 0.5);
    int c3 = g.add_conv("c3", clip, 8, 8, 1, 1, 0, 1, true);
    int clip3 = g.add_clip("clip3", c3, -1.0, 1.0);
    g.set_output(g.add_binary("sum", Op::kAdd, clip3, c3));
    torch::manual_seed(6);
    for (auto& n : g.nodes()) {
        for (auto& [name, t] : n.params) {
            t.normal_(0, 1.5);  // values well outside every range
        }
    }
    torch::Tensor in = torch::randn({2, 4, 9, 9}) * 3;
    Model m(g.clone(), {});
    m.eval();
    torch::Tensor expected;
    {
        at::AutoGradMode grad(true);  // at::conv2d and at::clamp
        expected = m.forward(in).detach();
    }
    torch::NoGradGuard no_grad;
    for (int64_t batch : {2, 1}) {
        SCOPED_TRACE(batch);
        const torch::Tensor x = in.narrow(0, 0, batch);
        EXPECT_LT((m.forward(x) - expected.narrow(0, 0, batch)).abs().max().item<double>(), 1e-4);
    }
}

TEST(InferenceTest, RestoredBatchNormComputesTheFoldedFunction) {
    // An eval-mode export folds BN into biased convs; insert_batch_norm puts BN back with the
    // conv rescaled to unit output variance. In eval mode the result must equal the folded model,
    // and in training mode (batch statistics of the same data) nearly so.
    torch::manual_seed(1);
    for (const char* arch : {"resnet20", "mobilenet_v2"}) {
        SCOPED_TRACE(arch);
        Graph g = build_zoo_model(arch, 7, {3, 32, 32});
        randomize_batch_norms(g);
        Graph folded = fold_batch_norm(g);
        EXPECT_TRUE(folded_convs(g).empty()) << "a graph with BN has nothing to restore";
        std::vector<int> convs = folded_convs(folded);
        ASSERT_FALSE(convs.empty());
        Model fm(folded.clone(), {});
        fm.eval();
        torch::Tensor x = torch::randn({16, 3, 32, 32});
        std::vector<torch::Tensor> outs, mean, var;
        torch::Tensor expected;
        {
            torch::NoGradGuard no_grad;
            expected = fm.forward_capture(x, convs, outs);
        }
        for (const auto& o : outs) {
            mean.push_back(o.mean({0, 2, 3}));
            var.push_back(o.var({0, 2, 3}, /*unbiased=*/false));
        }
        Graph restored = insert_batch_norm(folded, convs, mean, var);
        EXPECT_EQ(restored.nodes().size(), folded.nodes().size() + convs.size());
        EXPECT_TRUE(folded_convs(restored).empty());
        Model rm(restored.clone(), {});
        rm.eval();
        torch::NoGradGuard no_grad;
        torch::Tensor y = rm.forward(x);
        double scale = std::max(1.0, expected.abs().max().item<double>());
        EXPECT_LT((y - expected).abs().max().item<double>() / scale, 1e-4);
        // Folding the restored graph again gives the folded model back.
        Model refolded(fold_batch_norm(restored), {});
        refolded.eval();
        EXPECT_LT((refolded.forward(x) - expected).abs().max().item<double>() / scale, 1e-4);
        EXPECT_THROW(insert_batch_norm(folded, convs, {}, var), Error);
    }
}

TEST(ZooTest, ErrorsAreClear) {
    expect_error<ConfigError>(
        [] {
            build_zoo_model("resnet21", 10, {3, 32, 32});
        },
        "did you mean 'resnet20'?");
    expect_error<ConfigError>([] { build_zoo_model("vgg16", 10, {3, 8, 8}); }, "too small");
}

TEST(ZooTest, SeededInitIsDeterministic) {
    Graph a = build_zoo_model("lenet5", 10, {1, 28, 28}, 5);
    Graph b = build_zoo_model("lenet5", 10, {1, 28, 28}, 5);
    Graph c = build_zoo_model("lenet5", 10, {1, 28, 28}, 6);
    EXPECT_TRUE(torch::equal(a.nodes()[1].params.at("weight"), b.nodes()[1].params.at("weight")));
    EXPECT_FALSE(torch::equal(a.nodes()[1].params.at("weight"), c.nodes()[1].params.at("weight")));
}

TEST(GraphTest, ValidationCatchesShapeMismatches) {
    Graph g({3, 8, 8});
    g.add_conv("conv", 0, 4, 8, 3);  // expects 4 input channels, gets 3
    expect_error<InputError>([&] { g.validate(); }, "expects 4 input channels, got 3");
    Graph h({3, 8, 8});
    int x = h.add_unary("flat", Op::kFlatten, 0);
    h.add_linear("fc", x, 100, 10);
    expect_error<InputError>([&] { h.validate(); }, "input [192] is not [100]");
    // A linear layer over the last axis of an image-shaped value (an imported MatMul): refused,
    // it would export as an invalid Gemm and prune along the wrong axis.
    Graph m({3, 8, 8});
    m.add_linear("fc", 0, 8, 10);
    expect_error<InputError>([&] { m.validate(); }, "input [3, 8, 8] is not [8] (features");
    // Shapes a file can declare that once divided by zero: a Reshape whose product overflows, a
    // layer with no outputs (its MACs divide by the output count).
    Graph r({3, 8, 8});
    Node reshape;
    reshape.name = "reshape";
    reshape.op = Op::kReshape;
    reshape.inputs = {0};
    reshape.attrs.shape = {int64_t{1} << 32, int64_t{1} << 32, -1};
    r.add(reshape);
    expect_error<InputError>([&] { r.validate(); }, "has over 2^40 elements");
    Graph z({3, 8, 8});
    x = z.add_unary("flat", Op::kFlatten, 0);
    z.add_linear("fc", x, 192, 0);
    expect_error<InputError>([&] { z.validate(); }, "output shape [0] is empty");
    Graph c({3, 8, 8});
    c.add_conv("conv", 0, 3, 0, 3);
    expect_error<InputError>([&] { c.validate(); }, "is empty");
}

TEST(GraphTest, LayerStatsCountParamsAndMacs) {
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    auto stats = g.layer_stats();
    const auto& conv1 = stats[static_cast<size_t>(g.find("conv1"))];
    EXPECT_EQ(conv1.out_shape, (std::vector<int64_t>{6, 28, 28}));
    EXPECT_EQ(conv1.params, 6 * 25 + 6);
    EXPECT_EQ(conv1.macs, 6 * 28 * 28 * 25);
    EXPECT_EQ(g.total_params(), 61706);
}

class PfmTest : public SeededTest {};

TEST_F(PfmTest, RoundTripKeepsGraphWeightsAndOutputs) {
    testing::TempDir dir;
    Graph g = build_zoo_model("mobilenet_v2", 5, {3, 32, 32}, 1);
    for (auto& n : g.nodes()) {
        for (auto& [k, t] : n.buffers) {
            t.uniform_(0.5, 1.5);
        }
    }
    ModelMeta meta{"mobilenet_v2", "cifar10", {0.1, 0.2, 0.3}, {0.4, 0.5, 0.6}};
    save_model(dir.file("m.pfm"), g, meta);
    ModelFile f = load_model(dir.file("m.pfm"));
    EXPECT_EQ(f.meta.arch, "mobilenet_v2");
    EXPECT_EQ(f.meta.std, meta.std);
    EXPECT_EQ(f.graph.nodes().size(), g.nodes().size());
    Model a(g.clone(), meta), b(std::move(f.graph), f.meta);
    a.eval();
    b.eval();
    torch::NoGradGuard no_grad;
    auto x = torch::randn({2, 3, 32, 32});
    EXPECT_TRUE(torch::equal(a.forward(x), b.forward(x)));
}

TEST_F(PfmTest, NamesThatAreNotUtf8AreSavedNotThrown) {
    // An ONNX file's metadata can carry any bytes into the model's names; saving writes the
    // invalid ones as U+FFFD instead of failing after the work is done.
    testing::TempDir dir;
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    g.nodes()[1].name = "conv\xe8";
    save_model(dir.file("m.pfm"), g, {"mod\xe8le", "data\xff", {}, {}});
    ModelFile f = load_model(dir.file("m.pfm"));
    EXPECT_EQ(f.meta.arch, "mod\xef\xbf\xbdle");
    EXPECT_EQ(f.meta.dataset, "data\xef\xbf\xbd");
    EXPECT_EQ(f.graph.nodes()[1].name, "conv\xef\xbf\xbd");
    EXPECT_EQ(json_text(nlohmann::json{{"path", "a\xe8"}}), "{\"path\":\"a\xef\xbf\xbd\"}");
}

TEST_F(PfmTest, Version1FilesWithAnUncompressedHeaderStillLoad) {
    testing::TempDir dir;
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    save_model(dir.file("v2.pfm"), g, {});
    const std::string v2 = read_file(dir.file("v2.pfm"));
    uint64_t header_len = 0, raw_len = 0;
    std::memcpy(&header_len, v2.data() + 12, 8);
    std::memcpy(&raw_len, v2.data() + 20, 8);
    std::string json_text(raw_len, '\0');
    uLongf got = raw_len;
    ASSERT_EQ(uncompress(reinterpret_cast<Bytef*>(json_text.data()), &got,
                         reinterpret_cast<const Bytef*>(v2.data() + 28), header_len - 8),
              Z_OK);
    std::string v1 = v2.substr(0, 8);
    const uint32_t version = 1;
    const uint64_t len = json_text.size();
    v1.append(reinterpret_cast<const char*>(&version), 4);
    v1.append(reinterpret_cast<const char*>(&len), 8);
    v1 += json_text;
    v1 += v2.substr(20 + header_len, v2.size() - 4 - 20 - header_len);
    const uint32_t crc = crc32_update(0, v1.data(), v1.size());
    v1.append(reinterpret_cast<const char*>(&crc), 4);
    write_file_atomic(dir.file("v1.pfm"), v1);
    ModelFile f = load_model(dir.file("v1.pfm"));
    ASSERT_EQ(f.graph.nodes().size(), g.nodes().size());
    for (size_t i = 0; i < g.nodes().size(); ++i) {
        for (const auto& [k, t] : g.nodes()[i].params) {
            EXPECT_TRUE(t.equal(f.graph.nodes()[i].params.at(k))) << g.nodes()[i].name << "." << k;
        }
        EXPECT_EQ(f.graph.nodes()[i].attrs.kernel, g.nodes()[i].attrs.kernel);
    }
    EXPECT_LT(v2.size(), v1.size());  // the deflated header
}

TEST_F(PfmTest, CorruptionAndTruncationAreClearErrors) {
    testing::TempDir dir;
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    save_model(dir.file("m.pfm"), g, {});
    std::string bytes = read_file(dir.file("m.pfm"));

    write_file_atomic(dir.file("trunc.pfm"), bytes.substr(0, bytes.size() / 2));
    expect_error<InputError>([&] { load_model(dir.file("trunc.pfm")); }, "truncated or corrupted");
    std::string flipped = bytes;
    flipped[flipped.size() - 100] ^= 0x40;
    write_file_atomic(dir.file("flip.pfm"), flipped);
    expect_error<InputError>([&] { load_model(dir.file("flip.pfm")); }, "checksum mismatch");
    write_file_atomic(dir.file("junk.pfm"), "hello world, not a model at all");
    expect_error<InputError>([&] { load_model(dir.file("junk.pfm")); }, "bad magic");
    write_file_atomic(dir.file("tiny.pfm"), "PF");
    expect_error<InputError>([&] { load_model(dir.file("tiny.pfm")); }, "too short");
    expect_error<InputError>([&] { load_model(dir.file("absent.pfm")); }, "no such file");
    // Every prefix of the file is rejected cleanly (never a crash).
    for (size_t len = 0; len < bytes.size(); len += 997) {
        write_file_atomic(dir.file("p.pfm"), bytes.substr(0, len));
        EXPECT_THROW(load_model(dir.file("p.pfm")), InputError) << len;
    }
}

}  // namespace
}  // namespace pocketflow
