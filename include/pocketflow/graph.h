// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace pocketflow {

/// The operations the graph IR can represent. Every builder (zoo, ONNX import) emits these and
/// every pass (analysis, surgery, export) reads them.
enum class Op {
    kInput,
    kConv2d,
    kBatchNorm2d,
    kReLU,
    kClip,  ///< clamp(min, max); ReLU6 is Clip(0, 6)
    kSigmoid,
    kHardSigmoid,  ///< clamp(alpha * x + beta, 0, 1)
    kHardSwish,
    kAdd,
    kMul,
    kConcat,
    kMaxPool,
    kAvgPool,
    kGlobalAvgPool,
    kFlatten,
    kReshape,
    kLinear,
    kDropout,
    kIdentity,
};

/// Name of an op as written in files and tables ("Conv2d", "ReLU", ...).
const char* op_name(Op op);
/// Parses op_name()'s output; throws InputError for an unknown name.
Op op_from_name(const std::string& name);

/// Attributes of a node. Only the fields meaningful for the node's op are used.
struct Attrs {
    // Conv2d / pools
    std::vector<int64_t> kernel;    ///< {kh, kw}
    std::vector<int64_t> stride;    ///< {sh, sw}
    std::vector<int64_t> padding;   ///< {ph, pw} (symmetric)
    std::vector<int64_t> dilation;  ///< {dh, dw}
    int64_t groups = 1;
    int64_t out_channels = 0;       ///< Conv2d, Linear (out features)
    bool ceil_mode = false;         ///< pools
    bool count_include_pad = true;  ///< AvgPool
    // Clip
    double min = 0, max = 6;
    // HardSigmoid
    double alpha = 1.0 / 6.0, beta = 0.5;
    // BatchNorm2d
    double eps = 1e-5, momentum = 0.1;
    // Dropout
    double p = 0.5;
    // Concat axis, Flatten start axis
    int64_t axis = 1;
    // Reshape target (per-sample shape, batch kept; -1 allowed once)
    std::vector<int64_t> shape;
};

/// How a node is quantized (uniform_quantization; include/pocketflow/quant.h computes with it).
/// Zero bits: float. The numbers live in the node's buffers, so checkpoints, .pfm and every pass
/// see them: `weight_scale` ([C_out] per channel, or [1]) for weights, `act_range` ([lo, hi]) for
/// the node's output value.
struct QuantSpec {
    int weight_bits = 0;  ///< Conv2d/Linear: signed symmetric integers, scales in weight_scale
    int weight_qmax = 0;  ///< largest integer magnitude (2^(bits-1) - 1, or less: see quant.h)
    int act_bits = 0;     ///< the node's output is quantized: unsigned, asymmetric, from act_range
    bool any() const { return weight_bits > 0 || act_bits > 0; }
};

/// One node of the graph: an op, its input edges (indices of earlier nodes), attributes and named
/// parameter/buffer tensors (Conv2d: weight [+bias]; BatchNorm2d: weight, bias, running_mean,
/// running_var; Linear: weight, bias).
struct Node {
    std::string name;
    Op op = Op::kIdentity;
    std::vector<int> inputs;
    Attrs attrs;
    QuantSpec quant;
    std::map<std::string, at::Tensor> params;   ///< trainable
    std::map<std::string, at::Tensor> buffers;  ///< not trainable (BN running statistics)
};

/// Per-node facts computed from shapes: output shape (without batch), parameters and MACs.
struct LayerStats {
    std::string name;
    Op op;
    std::vector<int64_t> out_shape;
    int64_t params = 0;
    int64_t macs = 0;
};

/// A CNN as a topologically ordered list of nodes. Node 0 is the input; `output` is the node whose
/// value is the model's output (logits).
///
/// Example:
///   Graph g({1, 28, 28});
///   int x = g.add_conv("conv1", g.input(), 1, 6, 5, 1, 2);
///   x = g.add_unary("relu1", Op::kReLU, x);
class Graph {
public:
    Graph() = default;
    explicit Graph(std::vector<int64_t> input_shape);

    const std::vector<Node>& nodes() const { return nodes_; }
    std::vector<Node>& nodes() { return nodes_; }
    const std::vector<int64_t>& input_shape() const { return input_shape_; }
    int input() const { return 0; }
    int output() const { return output_; }
    void set_output(int node) { output_ = node; }

    /// Appends a node (inputs must be earlier nodes; the name must be unique) and returns its
    /// index.
    int add(Node node);
    int add_conv(const std::string& name,
                 int in,
                 int64_t c_in,
                 int64_t c_out,
                 int64_t k,
                 int64_t stride = 1,
                 int64_t pad = 0,
                 int64_t groups = 1,
                 bool bias = false);
    int add_bn(const std::string& name, int in, int64_t channels);
    int add_unary(const std::string& name, Op op, int in);
    int add_clip(const std::string& name, int in, double lo, double hi);
    int add_binary(const std::string& name, Op op, int a, int b);
    int add_pool(
        const std::string& name, Op op, int in, int64_t k, int64_t stride, int64_t pad = 0);
    int add_linear(const std::string& name, int in, int64_t in_features, int64_t out_features);
    int add_dropout(const std::string& name, int in, double p);

    /// Output shapes (without batch) of every node; throws Error on an inconsistent graph.
    std::vector<std::vector<int64_t>> infer_shapes() const;
    /// Per-node params and MACs (conv and linear multiply-adds; other ops count 0 MACs).
    std::vector<LayerStats> layer_stats() const;
    int64_t total_params() const;
    int64_t total_macs() const;
    /// Bytes of all parameters and buffers as stored in a .pfm: float32, quantized weights packed
    /// at their bit width, sparse and codebook weights compressed (weight_codec.h).
    int64_t weight_bytes() const;
    /// Number of classes: the output's last dimension.
    int64_t num_classes() const;

    /// Checks edges, names, parameter shapes; throws InputError describing the first problem.
    void validate() const;
    /// Index of the node with this name, or -1.
    int find(const std::string& name) const;
    /// Deep copy (tensors cloned).
    Graph clone() const;

private:
    std::vector<int64_t> input_shape_;
    std::vector<Node> nodes_;
    int output_ = 0;
};

/// Bytes of a node's parameters and buffers as stored in a .pfm (quantized weights packed,
/// sparse and codebook weights compressed).
int64_t node_bytes(const Node& node);

/// An inference copy of `graph`: every BatchNorm2d whose input is a conv read by nothing else is
/// folded into that conv (weights scaled per output channel, bias shifted) and removed. Outputs
/// match the original in eval mode (running statistics) up to float rounding.
Graph fold_batch_norm(const Graph& graph);

/// The convs of a BN-folded graph (an eval-mode export): convs with a bias whose output no
/// BatchNorm2d reads. A graph that has any BatchNorm2d yields none.
std::vector<int> folded_convs(const Graph& graph);

/// The inverse of fold_batch_norm for training: a copy of `graph` with a BatchNorm2d after each
/// conv of `convs`, given the per-channel mean and variance of that conv's output on real data.
/// The conv is rescaled to the weight RMS of a He initialisation and loses its bias; the BN's
/// statistics, scale and shift are set so that the model computes the same function in eval mode.
/// Trained, it behaves like the BN network it was exported from: a BN-free network at the learning
/// rates of a BN recipe diverges (docs/performance.md).
Graph insert_batch_norm(const Graph& graph,
                        const std::vector<int>& convs,
                        const std::vector<at::Tensor>& mean,
                        const std::vector<at::Tensor>& var,
                        double eps = 1e-5);

/// Initialises weights the way PyTorch's modules do by default for training from scratch:
/// Kaiming-normal (fan_out, ReLU) for convs, U(±1/√fan_in) for linear weights and biases, BN gamma
/// 1 and beta 0, zero running mean and unit running variance.
void init_weights(Graph& graph, uint64_t seed);

}  // namespace pocketflow
