// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/onnx.h"

#include <filesystem>

#include <ATen/core/grad_mode.h>
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <torch/torch.h>

#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

fs::path fixture(const std::string& name) {
    return fs::path(POCKETFLOW_SOURCE_DIR) / "tests" / "fixtures" / "onnx" / name;
}

torch::Tensor run(const Graph& g, const torch::Tensor& x) {
    Model m(g.clone(), {});
    m.eval();
    torch::NoGradGuard no_grad;
    return m.forward(x);
}

/// Randomises BN statistics so folding BN into convs is really exercised.
void randomize_bn(Graph& g) {
    torch::NoGradGuard no_grad;
    for (auto& n : g.nodes()) {
        if (n.op == Op::kBatchNorm2d) {
            n.buffers["running_mean"].uniform_(-0.5, 0.5);
            n.buffers["running_var"].uniform_(0.5, 2.0);
            n.params["weight"].uniform_(0.5, 1.5);
            n.params["bias"].uniform_(-0.5, 0.5);
        }
    }
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
    return (a - b).abs().max().item<double>();
}

bool have_ort() {
    return !ort_runner_path().empty();
}

class OnnxZooTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OnnxZooTest, ExportImportRoundTripAndOnnxRuntime) {
    torch::manual_seed(0);
    const std::string arch = GetParam();
    std::vector<int64_t> shape =
        arch == "lenet5" ? std::vector<int64_t>{1, 28, 28} : std::vector<int64_t>{3, 32, 32};
    Graph g = build_zoo_model(arch, 10, shape, 1);
    randomize_bn(g);
    testing::TempDir dir;
    std::string path = dir.file(arch + ".onnx");
    ModelMeta meta{arch, "x", {0.5}, {0.25}};
    export_onnx(path, g, meta, {13, true, true});
    ModelFile back = import_onnx(path);
    EXPECT_EQ(back.meta.arch, arch);
    EXPECT_EQ(back.meta.std, meta.std);
    // BN is folded into the convs, so the re-imported graph has fewer nodes but the same function.
    torch::Tensor x = torch::randn({3, shape[0], shape[1], shape[2]});
    torch::Tensor y = run(g, x);
    EXPECT_LE(max_diff(y, run(back.graph, x)), 1e-5 * std::max(1.0, y.abs().max().item<double>()));
    if (!have_ort()) {
        GTEST_SKIP() << "ONNX Runtime not installed (tools/setup.sh --ort)";
    }
    OrtRun r = run_onnxruntime(path, x);
    EXPECT_LE(max_diff(y, r.output), 1e-4 * std::max(1.0, y.abs().max().item<double>()));
}

INSTANTIATE_TEST_SUITE_P(Zoo, OnnxZooTest, ::testing::ValuesIn(zoo_names()));

class OnnxFixtureTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OnnxFixtureTest, PyTorchExportImportsAndMatchesOnnxRuntime) {
    torch::manual_seed(0);
    fs::path path = fixture(GetParam());
    ModelFile m = import_onnx(path.string());
    const auto& shape = m.graph.input_shape();
    torch::Tensor x = torch::randn({2, shape[0], shape[1], shape[2]});
    torch::Tensor y = run(m.graph, x);
    EXPECT_EQ(y.sizes().size(), 2u);
    if (!have_ort()) {
        GTEST_SKIP() << "ONNX Runtime not installed (tools/setup.sh --ort)";
    }
    OrtRun reference = run_onnxruntime(path.string(), x);
    EXPECT_LE(max_diff(y, reference.output), 1e-4);
    // ... and our export of it runs in ONNX Runtime with the same outputs.
    testing::TempDir dir;
    export_onnx(dir.file("out.onnx"), m.graph, m.meta);
    EXPECT_LE(max_diff(y, run_onnxruntime(dir.file("out.onnx"), x).output), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(PyTorch,
                         OnnxFixtureTest,
                         ::testing::Values("tiny_resnet_opset11.onnx",
                                           "tiny_resnet_opset13.onnx",
                                           "tiny_mobile_opset14.onnx",
                                           "tiny_mobile_opset17.onnx"));

TEST(OnnxImportTest, FixturesMapEveryOp) {
    std::set<Op> seen;
    for (const char* f :
         {"tiny_resnet_opset11.onnx", "tiny_resnet_training.onnx", "tiny_mobile_opset14.onnx"}) {
        const ModelFile file = import_onnx(fixture(f).string());  // outlives the loop
        for (const auto& n : file.graph.nodes()) {
            seen.insert(n.op);
        }
    }
    for (Op op :
         {Op::kConv2d, Op::kBatchNorm2d, Op::kReLU, Op::kClip, Op::kSigmoid, Op::kHardSigmoid,
          Op::kHardSwish, Op::kAdd, Op::kMul, Op::kConcat, Op::kMaxPool, Op::kAvgPool,
          Op::kGlobalAvgPool, Op::kFlatten, Op::kReshape, Op::kLinear, Op::kDropout}) {
        EXPECT_TRUE(seen.count(op)) << op_name(op);
    }
    Graph g = import_onnx(fixture("tiny_mobile_opset14.onnx").string()).graph;
    int dw = -1;
    for (size_t i = 0; i < g.nodes().size(); ++i) {
        if (g.nodes()[i].op == Op::kConv2d && g.nodes()[i].attrs.groups == 16) {
            dw = static_cast<int>(i);
        }
    }
    EXPECT_GE(dw, 0);  // the depthwise conv keeps its groups
}

TEST(OnnxImportTest, TrainingModeExportHasTheSameWeights) {
    // torch.onnx.export(training=TRAINING) writes BN with training outputs and no constant folding;
    // the import gives the same graph function (in eval mode) as the eval-mode export.
    torch::manual_seed(0);
    ModelFile a = import_onnx(fixture("tiny_resnet_opset13.onnx").string());
    ModelFile b = import_onnx(fixture("tiny_resnet_training.onnx").string());
    torch::Tensor x = torch::randn({2, 3, 16, 16});
    EXPECT_LE(max_diff(run(a.graph, x), run(b.graph, x)), 1e-5);
    // The eval-mode file has BN folded into the convs by PyTorch; the training-mode one keeps BN.
    auto count = [](const Graph& g, Op op) {
        return std::count_if(g.nodes().begin(), g.nodes().end(),
                             [op](const Node& n) { return n.op == op; });
    };
    EXPECT_EQ(count(a.graph, Op::kBatchNorm2d), 0);
    EXPECT_EQ(count(b.graph, Op::kBatchNorm2d), 2);
    EXPECT_EQ(count(a.graph, Op::kConv2d), count(b.graph, Op::kConv2d));
}

TEST(OnnxImportTest, ImportedModelTrains) {
    ModelFile m = import_onnx(fixture("tiny_mobile_opset14.onnx").string());
    Model model(std::move(m.graph), m.meta);
    model.train();
    auto x = torch::randn({4, 3, 16, 16});
    auto loss = model.forward(x).pow(2).mean();
    loss.backward();
    int with_grad = 0;
    for (const auto& p : model.parameters()) {
        with_grad += p.grad().defined() ? 1 : 0;
    }
    EXPECT_EQ(with_grad, static_cast<int>(model.parameters().size()));
}

/// Builds a one-node ONNX model around `node` for error tests.
std::string one_node_model(const testing::TempDir& dir,
                           const std::function<void(onnx::GraphProto&)>& fill) {
    onnx::ModelProto m;
    m.set_ir_version(7);
    m.add_opset_import()->set_version(13);
    auto* g = m.mutable_graph();
    auto* in = g->add_input();
    in->set_name("x");
    auto* t = in->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : {1, 3, 8, 8}) {
        t->mutable_shape()->add_dim()->set_dim_value(d);
    }
    g->add_output()->set_name("y");
    fill(*g);
    std::string bytes;
    m.SerializeToString(&bytes);
    std::string path = dir.file("m.onnx");
    write_file_atomic(path, bytes);
    return path;
}

/// A one-node model: node `name` of `op` reading `inputs` and writing "y"; `attrs` adds attributes.
std::string single_op_model(const testing::TempDir& dir,
                            const std::string& name,
                            const std::string& op,
                            const std::vector<std::string>& inputs,
                            const std::function<void(onnx::NodeProto&)>& attrs = {}) {
    return one_node_model(dir, [&](onnx::GraphProto& g) {
        auto* n = g.add_node();
        n->set_name(name);
        n->set_op_type(op);
        for (const auto& in : inputs) {
            n->add_input(in);
        }
        n->add_output("y");
        if (attrs) {
            attrs(*n);
        }
    });
}

/// A float initializer named `name` holding `t`.
void add_initializer(onnx::GraphProto& g, const std::string& name, const at::Tensor& t) {
    auto* init = g.add_initializer();
    init->set_name(name);
    init->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : t.sizes()) {
        init->add_dims(d);
    }
    init->set_raw_data(std::string(static_cast<const char*>(t.data_ptr()), t.numel() * 4));
}

TEST(OnnxImportTest, IdentityOfAWeightIsAnAliasOfIt) {
    // PyTorch's exporter writes Identity nodes for weights it folded twice (e.g. a conv after a
    // BatchNorm with default statistics).
    testing::TempDir dir;
    at::Tensor w = at::randn({4, 3, 3, 3});
    auto path = one_node_model(dir, [&](onnx::GraphProto& g) {
        add_initializer(g, "w", w);
        auto* id = g.add_node();
        id->set_name("alias");
        id->set_op_type("Identity");
        id->add_input("w");
        id->add_output("w_alias");
        auto* conv = g.add_node();
        conv->set_name("conv");
        conv->set_op_type("Conv");
        conv->add_input("x");
        conv->add_input("w_alias");
        conv->add_output("y");
    });
    ModelFile m = import_onnx(path);
    const Node& conv = m.graph.nodes()[static_cast<size_t>(m.graph.output())];
    ASSERT_EQ(conv.op, Op::kConv2d);
    EXPECT_TRUE(conv.params.at("weight").equal(w));
}

TEST(OnnxImportTest, UnsupportedOpsAndAttributesAreNamed) {
    testing::TempDir dir;
    auto path = single_op_model(dir, "lrn1", "LRN", {"x"});
    expect_error<InputError>([&] { import_onnx(path); },
                             "node 'lrn1' (LRN): op type is not supported");
    path = single_op_model(dir, "pool", "MaxPool", {"x"}, [](onnx::NodeProto& n) {
        auto* k = n.add_attribute();
        k->set_name("kernel_shape");
        k->add_ints(2);
        k->add_ints(2);
        auto* p = n.add_attribute();
        p->set_name("pads");
        for (int64_t v : {0, 0, 1, 1}) {
            p->add_ints(v);
        }
    });
    expect_error<InputError>([&] { import_onnx(path); },
                             "node 'pool' (MaxPool): pads [0, 0, 1, 1] are asymmetric");
    path = single_op_model(dir, "relu", "Relu", {"x"}, [](onnx::NodeProto& n) {
        auto* a = n.add_attribute();
        a->set_name("mystery");
        a->set_i(1);
    });
    expect_error<InputError>([&] { import_onnx(path); },
                             "node 'relu' (Relu): attribute 'mystery' is not supported");
    path = single_op_model(dir, "conv", "Conv", {"x", "w_dynamic"});
    expect_error<InputError>([&] { import_onnx(path); },
                             "weight (input 1) must be a constant initializer");
}

TEST(OnnxImportTest, MalformedFilesAreClearErrors) {
    testing::TempDir dir;
    write_file_atomic(dir.file("junk.onnx"), "this is not protobuf \xff\xff\xff");
    expect_error<InputError>([&] { import_onnx(dir.file("junk.onnx")); },
                             "not a valid ONNX protobuf");
    std::string bytes = read_file(fixture("tiny_resnet_opset11.onnx"));
    for (size_t len :
         {size_t{0}, size_t{10}, bytes.size() / 3, bytes.size() / 2, bytes.size() - 3}) {
        write_file_atomic(dir.file("t.onnx"), bytes.substr(0, len));
        EXPECT_THROW(import_onnx(dir.file("t.onnx")), InputError) << len;
    }
    expect_error<InputError>([&] { import_onnx(dir.file("absent.onnx")); }, "no such file");
}

/// A one-conv model: weight [4, 3, 3, 3] as an initializer, `attrs` sets the conv's attributes,
/// `edit` changes the model afterwards.
std::string conv_model(const testing::TempDir& dir,
                       const std::function<void(onnx::NodeProto&)>& attrs,
                       const std::function<void(onnx::ModelProto&)>& edit = {}) {
    const std::string path = one_node_model(dir, [&](onnx::GraphProto& g) {
        at::Tensor w = at::randn({4, 3, 3, 3});
        add_initializer(g, "w", w);
        auto* conv = g.add_node();
        conv->set_name("conv7");
        conv->set_op_type("Conv");
        conv->add_input("x");
        conv->add_input("w");
        conv->add_output("y");
        if (attrs) {
            attrs(*conv);
        }
    });
    if (edit) {
        onnx::ModelProto m;
        if (!m.ParseFromString(read_file(path))) {
            throw std::runtime_error("conv_model: the model does not parse back");
        }
        edit(m);
        std::string bytes;
        m.SerializeToString(&bytes);
        write_file_atomic(path, bytes);
    }
    return path;
}

void ints_attr(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v) {
    auto* a = n.add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) {
        a->add_ints(x);
    }
}

TEST(OnnxImportTest, HostileFilesNameTheFileTheNodeAndTheValue) {
    testing::TempDir dir;
    // Attributes the graph cannot compute with: the file, the node and the values are named.
    auto path = conv_model(dir, [](onnx::NodeProto& n) { ints_attr(n, "strides", {0, 1}); });
    expect_error<InputError>([&] { import_onnx(path); }, "m.onnx: invalid graph: node conv7");
    expect_error<InputError>([&] { import_onnx(path); }, "stride [0, 1]");
    path = conv_model(dir, [](onnx::NodeProto& n) { ints_attr(n, "pads", {-1, -1, -1, -1}); });
    expect_error<InputError>([&] { import_onnx(path); }, "padding [-1, -1]");
    path = conv_model(dir, [](onnx::NodeProto& n) {
        auto* g = n.add_attribute();
        g->set_name("group");
        g->set_type(onnx::AttributeProto::INT);
        g->set_i(2);  // 4 output channels, 3 input channels: 2 groups do not divide 3
    });
    expect_error<InputError>([&] { import_onnx(path); }, "m.onnx: invalid graph: node conv7");
    // Too few inputs for the op (found by fuzzing: protobuf does not check the index).
    path = single_op_model(dir, "g1", "Gather", {"x"});
    expect_error<InputError>([&] { import_onnx(path); },
                             "node 'g1' (Gather): has 1 inputs; Gather needs at least 2");
    // Declared sizes are checked before anything is allocated.
    path = conv_model(dir, {}, [](onnx::ModelProto& m) {
        auto* init = m.mutable_graph()->mutable_initializer(0);
        init->set_dims(0, int64_t{1} << 30);
    });
    expect_error<InputError>([&] { import_onnx(path); },
                             "initializer w declares 28991029248 elements ([1073741824, 3, 3, "
                             "3]) but holds data for at most 432");
    path = conv_model(dir, {}, [](onnx::ModelProto& m) {
        auto* init = m.mutable_graph()->mutable_initializer(0);
        init->set_dims(0, int64_t{1} << 62);
    });
    expect_error<InputError>([&] { import_onnx(path); }, "over 2^40 elements");
    path = conv_model(dir, {}, [](onnx::ModelProto& m) {
        auto* dims = m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type();
        dims->mutable_shape()->mutable_dim(2)->set_dim_value(int64_t{1} << 40);
    });
    expect_error<InputError>([&] { import_onnx(path); }, "is not an image");
    // Normalisation metadata: numbers, std above 0, one value or one per channel.
    auto with_meta = [&](const std::string& key, const std::string& value) {
        return conv_model(dir, {}, [&](onnx::ModelProto& m) {
            auto* p = m.add_metadata_props();
            p->set_key(key);
            p->set_value(value);
        });
    };
    expect_error<InputError>([&] { import_onnx(with_meta("pocketflow.mean", "0.5,abc")); },
                             "metadata pocketflow.mean: \"0.5,abc\" is not a list of numbers "
                             "(abc is not a number)");
    expect_error<InputError>([&] { import_onnx(with_meta("pocketflow.std", "0")); },
                             "mean has 0 values but std has 1");
    path = conv_model(dir, {}, [](onnx::ModelProto& m) {
        for (const auto& [k, v] : {std::pair<std::string, std::string>{"pocketflow.mean", "0.5"},
                                   {"pocketflow.std", "-1"}}) {
            auto* p = m.add_metadata_props();
            p->set_key(k);
            p->set_value(v);
        }
    });
    expect_error<InputError>([&] { import_onnx(path); }, "std[0] is -1");
    path = conv_model(dir, {}, [](onnx::ModelProto& m) {
        for (const auto& [k, v] : {std::pair<std::string, std::string>{"pocketflow.mean", "0,0"},
                                   {"pocketflow.std", "1,1"}}) {
            auto* p = m.add_metadata_props();
            p->set_key(k);
            p->set_value(v);
        }
    });
    expect_error<InputError>([&] { import_onnx(path); },
                             "mean and std have 2 values for an input of 3 channels");
}

TEST(OnnxExportTest, RejectsBadOpsetAndPassesChecker) {
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    testing::TempDir dir;
    expect_error<ConfigError>(
        [&] {
            export_onnx(dir.file("a.onnx"), g, {}, {9, true, true});
        },
        "opset 9");
    for (int64_t opset : {11, 13, 14, 17}) {
        EXPECT_NO_THROW(export_onnx(dir.file("a.onnx"), g, {}, {opset, opset % 2 == 0, true}));
    }
    EXPECT_EQ(load_any_model(dir.file("a.onnx")).graph.total_params(), g.total_params());
}

}  // namespace
}  // namespace pocketflow
