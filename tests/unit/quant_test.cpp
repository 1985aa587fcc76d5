// SPDX-License-Identifier: Apache-2.0
// Uniform quantization: fake quantization against a reference, placement of the quantization
// points, packing and .pfm round trips, range calibration, QDQ export in ONNX Runtime.
#include "pocketflow/quant.h"

#include <map>
#include <numeric>
#include <random>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <torch/torch.h>

#include "pocketflow/data.h"
#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"
#include "uniform_quantization/uniform_quantization.h"

namespace pocketflow {
namespace {

/// Every conv/linear of `graph` at `bits`.
QuantizeOptions all_layers(const Graph& graph, LayerBits bits, int qmax_8bit = 127) {
    QuantizeOptions o;
    for (const auto& n : graph.nodes()) {
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            o.layers[n.name] = bits;
        }
    }
    o.qmax_8bit = qmax_8bit;
    return o;
}

/// A BN-folded zoo model with quantization prepared and activation ranges calibrated on random
/// images.
std::shared_ptr<Model> quantized_zoo(const std::string& arch,
                                     std::vector<int64_t> shape,
                                     LayerBits bits,
                                     int64_t classes = 10) {
    Graph g = build_zoo_model(arch, classes, shape);
    init_weights(g, 7);
    g = fold_batch_norm(g);
    prepare_quantization(g, all_layers(g, bits));
    auto model = std::make_shared<Model>(std::move(g), ModelMeta{});
    at::manual_seed(3);
    model->set_activation_quant(false);
    {
        at::NoGradGuard no_grad;
        model->eval();
        std::vector<int> points;
        auto& nodes = model->graph().nodes();
        for (size_t i = 1; i < nodes.size(); ++i) {
            if (nodes[i].quant.act_bits > 0) {
                points.push_back(static_cast<int>(i));
            }
        }
        std::vector<at::Tensor> values;
        at::Tensor x = at::randn({16, shape[0], shape[1], shape[2]});
        model->forward_capture(x, points, values);
        nodes[0].buffers.at("act_range").copy_(at::stack({x.min(), x.max()}));
        for (size_t k = 0; k < points.size(); ++k) {
            nodes[static_cast<size_t>(points[k])]
                .buffers.at("act_range")
                .copy_(at::stack({values[k].min(), values[k].max()}));
        }
    }
    model->set_activation_quant(true);
    return model;
}

TEST(QuantTest, PackingRoundTripsAtEveryBitWidth) {
    std::mt19937 rng(1);
    for (int bits = 2; bits <= 8; ++bits) {
        const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
        std::uniform_int_distribution<int> dist(lo, hi);
        for (int64_t count : {1, 7, 8, 9, 1000}) {
            at::Tensor q = at::empty({count}, at::kInt);
            for (int64_t i = 0; i < count; ++i) {
                q[i] = dist(rng);
            }
            q[0] = lo;
            std::string packed = pack_ints(q, bits);
            EXPECT_EQ(static_cast<int64_t>(packed.size()), (count * bits + 7) / 8);
            at::Tensor back = unpack_ints(packed.data(), packed.size(), count, bits);
            EXPECT_TRUE(back.equal(q)) << bits << " bits, " << count << " values";
        }
    }
    testing::expect_error<Error>([] { pack_ints(at::tensor({8}, at::kInt), 4); },
                                 "does not fit 4 bits");
}

TEST(QuantTest, ActivationParametersHoldZeroAndTheRange) {
    ActParams relu = act_params(0.0f, 2.55f, 8);
    EXPECT_EQ(relu.zero_point, 0);
    EXPECT_FLOAT_EQ(relu.scale, 0.01f);
    ActParams both = act_params(-1.0f, 3.0f, 8);
    EXPECT_EQ(both.zero_point, 64);                  // round(1 / (4 / 255))
    ActParams positive = act_params(0.5f, 1.0f, 4);  // widened to hold 0
    EXPECT_EQ(positive.qmax, 15);
    EXPECT_EQ(positive.zero_point, 0);
    EXPECT_FLOAT_EQ(positive.scale, 1.0f / 15.0f);
    EXPECT_GT(act_params(0.0f, 0.0f, 8).scale, 0.0f);  // a dead value still has a valid scale
    EXPECT_EQ(weight_qmax(8), 127);
    EXPECT_EQ(weight_qmax(8, 63), 63);
    EXPECT_EQ(weight_qmax(4), 7);
    EXPECT_EQ(weight_qmax(2), 1);
}

TEST(QuantTest, FakeQuantizedWeightsMatchTheReferenceAndPassGradientsStraightThrough) {
    Graph g({3, 8, 8});
    int x = g.add_conv("conv", g.input(), 3, 5, 3, 1, 1);
    g.add_unary("relu", Op::kReLU, x);
    g.set_output(2);
    init_weights(g, 2);
    for (int bits : {2, 4, 8}) {
        Graph q = g.clone();
        prepare_quantization(q, all_layers(q, {bits, 8}));
        Node& conv = q.nodes()[1];
        const at::Tensor w = conv.params.at("weight").detach().clone();
        const double qmax = weight_qmax(bits);
        // Reference: per output channel s = max|w| / qmax, q = round(w / s), w = s q.
        at::Tensor s = std::get<0>(w.abs().reshape({5, -1}).max(1)) / qmax;
        at::Tensor ref =
            at::round(w / s.reshape({-1, 1, 1, 1})).clamp(-qmax, qmax) * s.reshape({-1, 1, 1, 1});
        conv.params.at("weight").set_requires_grad(true);
        at::Tensor got = quantized_weight(conv, true);
        EXPECT_TRUE(at::allclose(got, ref, 1e-6, 1e-7)) << bits << " bits";
        EXPECT_LE(at::round(got / s.reshape({-1, 1, 1, 1})).abs().max().item<double>(), qmax);
        at::Tensor upstream = at::randn(got.sizes());
        (got * upstream).sum().backward();
        EXPECT_TRUE(at::allclose(conv.params.at("weight").grad(), upstream));  // STE
        at::Tensor ints = weight_ints(conv);
        EXPECT_TRUE(ints.to(at::kFloat).mul(s.reshape({-1, 1, 1, 1})).allclose(ref));
    }
}

TEST(QuantTest, FakeQuantizedActivationsMatchTheReferenceAndTrackTheirRange) {
    Node n;
    n.name = "a";
    n.op = Op::kReLU;
    n.quant.act_bits = 4;
    n.buffers["act_range"] = at::tensor({0.0f, 1.5f});
    at::Tensor x = at::tensor({-0.3f, 0.0f, 0.26f, 0.7f, 1.49f, 2.0f}).set_requires_grad(true);
    at::Tensor y = quantize_activation(n, x, false, 0.1);
    // scale 0.1, zero point 0, integers 0..15: clamp(round(x / 0.1)) · 0.1
    at::Tensor ref = at::tensor({0.0f, 0.0f, 0.3f, 0.7f, 1.5f, 1.5f});
    EXPECT_TRUE(at::allclose(y, ref, 1e-6, 1e-6)) << y;
    y.sum().backward();
    // Straight through inside the range, zero outside it.
    EXPECT_TRUE(x.grad().equal(at::tensor({0.0f, 1.0f, 1.0f, 1.0f, 1.0f, 0.0f})));
    quantize_activation(n, at::tensor({-1.0f, 3.5f}), true, 0.5);  // EMA: halfway to the batch
    EXPECT_TRUE(at::allclose(n.buffers.at("act_range"), at::tensor({-0.5f, 2.5f})));
}

TEST(QuantTest, LearnedStepSizesGetGradientsAndFreezeBackIntoRanges) {
    Graph g({1, 4, 4});
    g.add_unary("relu", Op::kReLU, g.input());
    g.set_output(1);
    Node& n = g.nodes()[1];
    n.quant.act_bits = 8;
    n.buffers["act_range"] = at::tensor({0.0f, 2.55f});
    enable_learned_ranges(g);
    ASSERT_TRUE(n.params.count("act_scale"));
    EXPECT_FLOAT_EQ(n.params.at("act_scale").item<float>(), 0.01f);
    n.params.at("act_scale").set_requires_grad(true);
    at::Tensor x = at::linspace(0, 4, 16).reshape({1, 1, 4, 4});  // part of it beyond the range
    quantize_activation(n, x, true, 0.01).sum().backward();
    const float grad = n.params.at("act_scale").grad().item<float>();
    EXPECT_GT(grad, 0.0f);  // clipped values pull the step size up
    {
        at::NoGradGuard no_grad;
        n.params.at("act_scale").fill_(0.02f);
    }
    freeze_learned_ranges(g);
    EXPECT_FALSE(n.params.count("act_scale"));
    EXPECT_NEAR(act_params(n).scale, 0.02f, 1e-8);
    EXPECT_EQ(act_params(n).zero_point, 0);
    EXPECT_NEAR(n.buffers.at("act_range")[1].item<float>(), 5.1f, 1e-5);
}

TEST(QuantTest, QuantizationPointsSitWhereAnInt8RuntimeHasThem) {
    Graph g = fold_batch_norm(build_zoo_model("resnet20", 10, {1, 16, 16}));
    QuantReport report = prepare_quantization(g, all_layers(g, {8, 8}));
    EXPECT_EQ(report.layers.size(), 22u);  // 21 convs + fc
    EXPECT_TRUE(report.float_nodes.empty());
    auto quantized = [&](const std::string& name) {
        return g.nodes()[static_cast<size_t>(g.find(name))].quant.act_bits > 0;
    };
    EXPECT_GT(g.nodes()[0].quant.act_bits, 0);  // the image entering conv1
    EXPECT_FALSE(quantized("conv1"));           // conv → ReLU: after the ReLU
    EXPECT_TRUE(quantized("conv1_relu"));
    EXPECT_TRUE(quantized("layer1_0_conv2"));  // conv → residual Add: the conv's output
    EXPECT_FALSE(quantized("layer1_0_add"));   // Add → ReLU: after the ReLU
    EXPECT_TRUE(quantized("layer1_0_relu"));
    EXPECT_TRUE(quantized("avgpool"));
    EXPECT_FALSE(quantized("fc"));  // logits stay float
    auto src = quantized_values(g);
    EXPECT_EQ(src[static_cast<size_t>(g.find("flatten"))], g.find("avgpool"));  // pass-through
    // A layer left float and an op without an int8 kernel are reported.
    Graph m = build_zoo_model("mobilenet_v2", 10, {3, 32, 32});
    m = fold_batch_norm(m);
    QuantizeOptions some = all_layers(m, {8, 8});
    some.layers.erase("fc");
    QuantReport r = prepare_quantization(m, some);
    bool fc_float = false;
    for (const auto& [node, why] : r.float_nodes) {
        fc_float = fc_float || (node == "fc" && why.find("bits") != std::string::npos);
    }
    EXPECT_TRUE(fc_float);
}

TEST(QuantTest, ActivationBitsAreTheInputBitsOfTheLayersThatReadThem) {
    Graph g = fold_batch_norm(build_zoo_model("resnet20", 10, {1, 16, 16}));
    QuantizeOptions o = all_layers(g, {4, 4});
    o.layers["conv1"] = {8, 8};  // what keep_first_last does
    o.layers["fc"] = {8, 8};
    prepare_quantization(g, o);
    auto bits = [&](const std::string& name) {
        return g.nodes()[static_cast<size_t>(g.find(name))].quant.act_bits;
    };
    EXPECT_EQ(g.nodes()[0].quant.act_bits, 8);  // read by conv1 (8-bit inputs)
    EXPECT_EQ(bits("conv1_relu"), 4);           // read by layer1_0_conv1 (4) and an Add
    EXPECT_EQ(bits("layer1_0_conv2"), 4);       // read by an Add only: its own input bits
    EXPECT_EQ(bits("layer2_0_relu"), 4);        // the residual stream stays at 4 bits
    EXPECT_EQ(bits("layer3_2_relu"), 4);        // the last Add's output, read by the pool only
    EXPECT_EQ(bits("avgpool"), 8);              // read (through Flatten) by fc (8)
}

TEST(QuantTest, DeadChannelsKeepTheirBiasesAndOverflowSaturates) {
    Graph g({1, 4, 4});
    g.add_conv("conv", g.input(), 1, 2, 1, 1, 0, 1, true);
    g.set_output(1);
    Node& conv = g.nodes()[1];
    {
        at::NoGradGuard no_grad;
        conv.params.at("weight").zero_();  // dead channels (a filter pruning or sparsity emptied)
        conv.params.at("bias").copy_(at::tensor({1.0f, -1.0f}));
    }
    prepare_quantization(g, all_layers(g, {8, 8}));
    // Their weight scale is 1, not a 1e-8 floor: the bias keeps a grid of the input's scale (a
    // ReLU output in [0, 4] at 8 bits) instead of saturating at about 21 times it.
    EXPECT_FLOAT_EQ(conv.buffers.at("weight_scale")[0].item<float>(), 1.0f);
    const float input_scale = act_params(0.f, 4.f, 8).scale;
    auto [live, live_scale] = bias_ints(conv, input_scale);
    EXPECT_NEAR(live[0].item<int>() * live_scale[0].item<float>(), 1.0, input_scale / 2);
    EXPECT_NEAR(live[1].item<int>() * live_scale[1].item<float>(), -1.0, input_scale / 2);
    // A value that is always 0 (range [0, 0]) gets scale 1 too.
    EXPECT_FLOAT_EQ(act_params(0.f, 0.f, 8).scale, 1.0f);
    // A bias beyond int32 on its grid saturates instead of wrapping around to the other sign.
    auto [q, scale] = bias_ints(conv, 1e-12f);
    EXPECT_EQ(q[0].item<int>(), 2147483647);
    EXPECT_EQ(q[1].item<int>(), -2147483647 - 1);
    // Scales and ranges that no quantizer would write are rejected when a graph is checked.
    conv.buffers.at("weight_scale")[0] = -1.0f;
    testing::expect_error<InputError>([&] { g.validate(); }, "not finite and positive");
    conv.buffers.at("weight_scale")[0] = 1.0f;
    g.nodes()[0].buffers.at("act_range").copy_(at::tensor({1.0f, -1.0f}));
    testing::expect_error<InputError>([&] { g.validate(); }, "invalid activation range");
}

TEST(QuantTest, BadQuantizationRequestsAreInputErrors) {
    Graph g = fold_batch_norm(build_zoo_model("lenet5", 10, {1, 28, 28}));
    QuantizeOptions o;
    o.layers["relu1"] = {8, 8};
    testing::expect_error<InputError>([&] { prepare_quantization(g, o); },
                                      "only Conv2d and Linear");
    o.layers = {{"conv1", {9, 8}}};
    testing::expect_error<InputError>([&] { prepare_quantization(g, o); },
                                      "weight bits 9 outside 2–8");
    o.layers = {{"conv1", {8, 1}}};
    testing::expect_error<InputError>([&] { prepare_quantization(g, o); }, "activation bits 1");
    o.layers = {{"nope", {8, 8}}};
    testing::expect_error<InputError>([&] { prepare_quantization(g, o); }, "no such node");
}

TEST(QuantTest, LayerBitsFollowTheDefaultTheGlobsAndTheFirstLastRule) {
    Graph g = fold_batch_norm(build_zoo_model("resnet20", 10, {1, 16, 16}));
    learners::UniformQuantizationOptions o;
    o.default_bits = {4, 8};
    o.rules.push_back({"layer3_*", {2, 4}, "job.yaml:3:5"});
    auto bits = learners::resolve_layer_bits(g, o, "pipeline[0]");
    EXPECT_EQ(bits.at("conv1"), (LayerBits{8, 8}));  // first conv
    EXPECT_EQ(bits.at("fc"), (LayerBits{8, 8}));     // last linear
    EXPECT_EQ(bits.at("layer1_0_conv1"), (LayerBits{4, 8}));
    EXPECT_EQ(bits.at("layer3_2_conv2"), (LayerBits{2, 4}));
    o.rules.push_back({"fc", {4, 4}, "job.yaml:4:5"});  // named explicitly: no longer 8 bits
    EXPECT_EQ(learners::resolve_layer_bits(g, o, "pipeline[0]").at("fc"), (LayerBits{4, 4}));
    o.rules.push_back({"layer9_*", {4, 4}, "job.yaml:5:5"});
    testing::expect_error<ConfigError>(
        [&] { learners::resolve_layer_bits(g, o, "pipeline[0]"); },
        "job.yaml:5:5: failed to read pipeline[0].bits.layer9_*: the glob "
        "matches no conv or linear layer");
}

TEST(QuantTest, RangeCalibrationMethodsClipOutliers) {
    at::manual_seed(0);
    at::Tensor x = at::cat({at::randn({100000}).abs(), at::tensor({40.0f})});  // one outlier
    const float hi = x.max().item<float>();
    auto minmax = choose_range(x, 0, hi, 8, RangeMethod::kMinMax);
    auto pct = choose_range(x, 0, hi, 8, RangeMethod::kPercentile, 99.9);
    auto mse = choose_range(x, 0, hi, 4, RangeMethod::kMse);  // 4 bits: clipping pays
    EXPECT_FLOAT_EQ(minmax.second, 40.0f);
    EXPECT_NEAR(pct.second, 3.29, 0.15);  // the 99.9th percentile of |N(0, 1)|
    EXPECT_LT(mse.second, 0.5 * hi);
    EXPECT_EQ(pct.first, 0.0f);
}

TEST(QuantTest, QuantizedModelFilesAreSmallAndLoadExactly) {
    testing::TempDir dir;
    for (int bits : {8, 4}) {
        auto model = quantized_zoo("resnet20", {1, 28, 28}, {bits, 8});
        snap_quantized_weights(model->graph());
        save_model(dir.file("q.pfm"), model->graph(), model->meta());
        Graph float_graph = build_zoo_model("resnet20", 10, {1, 28, 28});
        save_model(dir.file("f.pfm"), float_graph, {});
        const double ratio = static_cast<double>(std::filesystem::file_size(dir.file("f.pfm"))) /
                             static_cast<double>(std::filesystem::file_size(dir.file("q.pfm")));
        EXPECT_GE(ratio, bits == 8 ? 3.9 : 7.0) << bits << " bits";
        ModelFile back = load_model(dir.file("q.pfm"));
        EXPECT_TRUE(is_quantized(back.graph));
        EXPECT_EQ(back.graph.weight_bytes(), model->graph().weight_bytes());
        Model loaded(std::move(back.graph), back.meta);
        model->eval();
        loaded.eval();
        at::NoGradGuard no_grad;
        at::Tensor x = at::randn({4, 1, 28, 28});
        EXPECT_TRUE(model->forward(x).equal(loaded.forward(x))) << bits << " bits";
    }
}

TEST(QuantTest, BiasCorrectionRemovesTheMeanShiftOfQuantizedLayers) {
    auto model = quantized_zoo("lenet5", {1, 28, 28}, {3, 8});  // 3-bit: a visible mean shift
    Graph float_graph = fold_batch_norm(build_zoo_model("lenet5", 10, {1, 28, 28}));
    init_weights(float_graph, 7);
    float_graph = fold_batch_norm(float_graph);
    Model reference(std::move(float_graph), {});
    std::shared_ptr<const Dataset> data = make_synthetic(64, 10, {1, 28, 28}, 5);
    std::vector<int64_t> idx(64);
    std::iota(idx.begin(), idx.end(), 0);
    LoaderOptions lo;
    lo.batch_size = 32;
    Loader loader(data, idx, lo);
    auto mean_error = [&] {
        at::NoGradGuard no_grad;
        loader.start_epoch(0);
        double e = 0;
        while (auto b = loader.next()) {
            e += (model->forward(b->images) - reference.forward(b->images))
                     .mean(0)
                     .abs()
                     .sum()
                     .item<double>();
        }
        return e;
    };
    const double before = mean_error();
    EXPECT_GT(correct_quantized_biases(*model, reference, loader), 0.0);
    EXPECT_LT(mean_error(), 0.5 * before);
}

/// A quantized model exported as QDQ and run in ONNX Runtime on `x`: its output, the
/// simulation's, and the op counts of ONNX Runtime's optimised graph.
struct QdqRun {
    at::Tensor output, simulated;
    std::map<std::string, int> ops;
};

QdqRun run_qdq(Model& model, const at::Tensor& x) {
    testing::TempDir dir;
    snap_quantized_weights(model.graph());
    export_onnx(dir.file("q.onnx"), model.graph(), model.meta());
    QdqRun q;
    q.output = run_onnxruntime(dir.file("q.onnx"), x, 0, 1, 1, dir.file("opt.onnx")).output;
    model.eval();
    at::NoGradGuard no_grad;
    q.simulated = model.forward(x);
    onnx::ModelProto opt;
    EXPECT_TRUE(opt.ParseFromString(read_file(dir.file("opt.onnx"))));
    for (const auto& n : opt.graph().node()) {
        ++q.ops[n.op_type()];
    }
    return q;
}

/// The largest difference between ONNX Runtime's and the simulation's outputs, in 8-bit steps of
/// the simulated output's range.
double output_steps(const QdqRun& q) {
    const double step = (q.simulated.max() - q.simulated.min()).item<double>() / 255;
    return (q.output - q.simulated).abs().max().item<double>() / step;
}

TEST(QuantTest, QdqExportRunsEveryConvAsAnInt8KernelInOnnxRuntime) {
    if (ort_runner_path().empty()) {
        GTEST_SKIP() << "ONNX Runtime not installed (tools/setup.sh --ort)";
    }
    auto model = quantized_zoo("resnet20", {1, 16, 16}, {8, 8});
    at::manual_seed(5);
    const QdqRun q = run_qdq(*model, at::randn({16, 1, 16, 16}));
    EXPECT_TRUE(q.output.argmax(1).equal(q.simulated.argmax(1)));
    EXPECT_LE(output_steps(q), 2.0);
    EXPECT_EQ(q.ops.at("QLinearConv"), 21);
    EXPECT_EQ(q.ops.count("Conv"), 0u);
    EXPECT_EQ(q.ops.at("QLinearAdd"), 9);
    EXPECT_EQ(q.ops.at("QGemm"), 1);
    EXPECT_EQ(q.ops.at("QLinearGlobalAveragePool"), 1);
}

TEST(QuantTest, QdqExportOfFourBitActivationsClipsToTheirLevels) {
    // ONNX has no 4-bit type: activations travel as uint8, clipped to the 16 levels the
    // simulation uses; ONNX Runtime's int8 kernels stay, and its outputs match the simulation.
    if (ort_runner_path().empty()) {
        GTEST_SKIP() << "ONNX Runtime not installed (tools/setup.sh --ort)";
    }
    auto model = quantized_zoo("resnet20", {1, 16, 16}, {8, 4});
    at::manual_seed(6);
    // Inputs beyond the calibrated ranges, so that the clipping counts.
    const QdqRun q = run_qdq(*model, at::randn({16, 1, 16, 16}) * 2);
    EXPECT_LE(output_steps(q), 2.0);
    EXPECT_EQ(q.ops.at("QLinearConv"), 21);
    EXPECT_EQ(q.ops.count("Conv"), 0u);
    EXPECT_GT(q.ops.count("Clip"), 0u);
}

}  // namespace
}  // namespace pocketflow
