// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/graph.h"

#include <cmath>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include "pocketflow/error.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/weight_codec.h"

namespace pocketflow {

namespace {
struct OpEntry {
    Op op;
    const char* name;
};
constexpr OpEntry kOps[] = {
    {Op::kInput, "Input"},
    {Op::kConv2d, "Conv2d"},
    {Op::kBatchNorm2d, "BatchNorm2d"},
    {Op::kReLU, "ReLU"},
    {Op::kClip, "Clip"},
    {Op::kSigmoid, "Sigmoid"},
    {Op::kHardSigmoid, "HardSigmoid"},
    {Op::kHardSwish, "HardSwish"},
    {Op::kAdd, "Add"},
    {Op::kMul, "Mul"},
    {Op::kConcat, "Concat"},
    {Op::kMaxPool, "MaxPool"},
    {Op::kAvgPool, "AvgPool"},
    {Op::kGlobalAvgPool, "GlobalAvgPool"},
    {Op::kFlatten, "Flatten"},
    {Op::kReshape, "Reshape"},
    {Op::kLinear, "Linear"},
    {Op::kDropout, "Dropout"},
    {Op::kIdentity, "Identity"},
};

int64_t pool_out(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
    double v = static_cast<double>(in + 2 * p - d * (k - 1) - 1) / static_cast<double>(s) + 1;
    int64_t out =
        ceil_mode ? static_cast<int64_t>(std::ceil(v)) : static_cast<int64_t>(std::floor(v));
    // PyTorch: with ceil_mode the last window must start inside the input (or left padding).
    if (ceil_mode && (out - 1) * s >= in + p) {
        --out;
    }
    return out;
}

/// The most elements a value may have (the .pfm and ONNX readers' bound for tensors).
constexpr int64_t kMaxElements = int64_t{1} << 40;

int64_t numel(const std::vector<int64_t>& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        n *= d;
    }
    return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
    return fmt::format("[{}]", fmt::join(s, ", "));
}
}  // namespace

const char* op_name(Op op) {
    for (const auto& e : kOps) {
        if (e.op == op) {
            return e.name;
        }
    }
    return "?";
}

Op op_from_name(const std::string& name) {
    for (const auto& e : kOps) {
        if (name == e.name) {
            return e.op;
        }
    }
    throw InputError(fmt::format("unknown op '{}'", name));
}

Graph::Graph(std::vector<int64_t> input_shape) : input_shape_(std::move(input_shape)) {
    Node in;
    in.name = "input";
    in.op = Op::kInput;
    nodes_.push_back(std::move(in));
}

int Graph::add(Node node) {
    for (char& c : node.name) {
        if (c == '.') {
            c = '_';
        }
    }
    PF_CHECK(!node.name.empty(), Error, "failed to add node: empty name");
    PF_CHECK(find(node.name) < 0, Error, "failed to add node {}: name already used", node.name);
    for (int in : node.inputs) {
        PF_CHECK(in >= 0 && in < static_cast<int>(nodes_.size()), Error,
                 "failed to add node {}: input {} is not an earlier node", node.name, in);
    }
    nodes_.push_back(std::move(node));
    output_ = static_cast<int>(nodes_.size()) - 1;
    return output_;
}

int Graph::add_conv(const std::string& name,
                    int in,
                    int64_t c_in,
                    int64_t c_out,
                    int64_t k,
                    int64_t stride,
                    int64_t pad,
                    int64_t groups,
                    bool bias) {
    Node n;
    n.name = name;
    n.op = Op::kConv2d;
    n.inputs = {in};
    n.attrs.kernel = {k, k};
    n.attrs.stride = {stride, stride};
    n.attrs.padding = {pad, pad};
    n.attrs.dilation = {1, 1};
    n.attrs.groups = groups;
    n.attrs.out_channels = c_out;
    n.params["weight"] = at::zeros({c_out, c_in / groups, k, k});
    if (bias) {
        n.params["bias"] = at::zeros({c_out});
    }
    return add(std::move(n));
}

int Graph::add_bn(const std::string& name, int in, int64_t channels) {
    Node n;
    n.name = name;
    n.op = Op::kBatchNorm2d;
    n.inputs = {in};
    n.params["weight"] = at::ones({channels});
    n.params["bias"] = at::zeros({channels});
    n.buffers["running_mean"] = at::zeros({channels});
    n.buffers["running_var"] = at::ones({channels});
    return add(std::move(n));
}

int Graph::add_unary(const std::string& name, Op op, int in) {
    Node n;
    n.name = name;
    n.op = op;
    n.inputs = {in};
    return add(std::move(n));
}

int Graph::add_clip(const std::string& name, int in, double lo, double hi) {
    Node n;
    n.name = name;
    n.op = Op::kClip;
    n.inputs = {in};
    n.attrs.min = lo;
    n.attrs.max = hi;
    return add(std::move(n));
}

int Graph::add_binary(const std::string& name, Op op, int a, int b) {
    Node n;
    n.name = name;
    n.op = op;
    n.inputs = {a, b};
    return add(std::move(n));
}

int Graph::add_pool(
    const std::string& name, Op op, int in, int64_t k, int64_t stride, int64_t pad) {
    Node n;
    n.name = name;
    n.op = op;
    n.inputs = {in};
    n.attrs.kernel = {k, k};
    n.attrs.stride = {stride, stride};
    n.attrs.padding = {pad, pad};
    n.attrs.dilation = {1, 1};
    return add(std::move(n));
}

int Graph::add_linear(const std::string& name, int in, int64_t in_features, int64_t out_features) {
    Node n;
    n.name = name;
    n.op = Op::kLinear;
    n.inputs = {in};
    n.attrs.out_channels = out_features;
    n.params["weight"] = at::zeros({out_features, in_features});
    n.params["bias"] = at::zeros({out_features});
    return add(std::move(n));
}

int Graph::add_dropout(const std::string& name, int in, double p) {
    Node n;
    n.name = name;
    n.op = Op::kDropout;
    n.inputs = {in};
    n.attrs.p = p;
    return add(std::move(n));
}

int Graph::find(const std::string& name) const {
    for (size_t i = 0; i < nodes_.size(); ++i) {
        if (nodes_[i].name == name) {
            return static_cast<int>(i);
        }
    }
    return -1;
}

std::vector<std::vector<int64_t>> Graph::infer_shapes() const {
    std::vector<std::vector<int64_t>> shapes(nodes_.size());
    PF_CHECK(input_shape_.size() == 3, InputError, "graph input shape {} is not [C, H, W]",
             shape_str(input_shape_));
    for (size_t i = 0; i < nodes_.size(); ++i) {
        const Node& n = nodes_[i];
        auto fail = [&](const std::string& why) {
            throw InputError(
                fmt::format("invalid graph: node {} ({}): {}", n.name, op_name(n.op), why));
        };
        auto in = [&](size_t k) -> const std::vector<int64_t>& {
            if (k >= n.inputs.size()) {
                fail(fmt::format("expects at least {} inputs", k + 1));
            }
            return shapes[static_cast<size_t>(n.inputs[k])];
        };
        auto param = [&](const char* key) -> const at::Tensor& {
            auto it = n.params.find(key);
            if (it == n.params.end() || !it->second.defined()) {
                fail(fmt::format("missing parameter '{}'", key));
            }
            return it->second;
        };
        auto spatial_attrs_ok = [&]() {
            const Attrs& a = n.attrs;
            if (a.kernel.size() != 2 || a.stride.size() != 2 || a.padding.size() != 2 ||
                a.dilation.size() != 2) {
                fail("kernel, stride, padding and dilation need 2 values each");
            }
            for (int d = 0; d < 2; ++d) {
                if (a.kernel[d] < 1 || a.stride[d] < 1 || a.padding[d] < 0 || a.dilation[d] < 1) {
                    fail(
                        fmt::format("kernel {}, stride {}, padding {}, dilation {}: kernel, "
                                    "stride and dilation must be >= 1 and padding >= 0",
                                    shape_str(a.kernel), shape_str(a.stride), shape_str(a.padding),
                                    shape_str(a.dilation)));
                }
            }
        };
        std::vector<int64_t> out;
        switch (n.op) {
            case Op::kInput:
                if (i != 0) {
                    fail("only node 0 can be the input");
                }
                out = input_shape_;
                break;
            case Op::kConv2d: {
                const auto& x = in(0);
                spatial_attrs_ok();
                const at::Tensor& w = param("weight");
                const Attrs& a = n.attrs;
                if (x.size() != 3) {
                    fail("input is not [C, H, W]: " + shape_str(x));
                }
                if (w.dim() != 4 || a.groups < 1 || w.size(0) != a.out_channels ||
                    w.size(2) != a.kernel[0] || w.size(3) != a.kernel[1] ||
                    a.out_channels % a.groups != 0) {
                    fail(fmt::format(
                        "weight {} does not match out_channels {}, kernel {}, groups {}",
                        shape_str(w.sizes().vec()), a.out_channels, shape_str(a.kernel), a.groups));
                }
                if (w.size(1) * a.groups != x[0]) {
                    fail(fmt::format("weight {} with groups {} expects {} input channels, got {}",
                                     shape_str(w.sizes().vec()), a.groups, w.size(1) * a.groups,
                                     x[0]));
                }
                auto b = n.params.find("bias");
                if (b != n.params.end() &&
                    (b->second.dim() != 1 || b->second.size(0) != a.out_channels)) {
                    fail("bias does not have out_channels elements");
                }
                int64_t h =
                    pool_out(x[1], a.kernel[0], a.stride[0], a.padding[0], a.dilation[0], false);
                int64_t wd =
                    pool_out(x[2], a.kernel[1], a.stride[1], a.padding[1], a.dilation[1], false);
                if (h < 1 || wd < 1) {
                    fail("input " + shape_str(x) + " is too small for the kernel");
                }
                out = {a.out_channels, h, wd};
                break;
            }
            case Op::kBatchNorm2d: {
                const auto& x = in(0);
                int64_t c = param("weight").numel();
                if (x.empty() || x[0] != c || param("bias").numel() != c ||
                    !n.buffers.count("running_mean") || !n.buffers.count("running_var") ||
                    n.buffers.at("running_mean").numel() != c ||
                    n.buffers.at("running_var").numel() != c) {
                    fail(fmt::format("parameters do not match {} channels of input {}", c,
                                     shape_str(x)));
                }
                out = x;
                break;
            }
            case Op::kReLU:
            case Op::kClip:
            case Op::kSigmoid:
            case Op::kHardSigmoid:
            case Op::kHardSwish:
            case Op::kDropout:
            case Op::kIdentity:
                out = in(0);
                break;
            case Op::kAdd:
            case Op::kMul: {
                const auto& a = in(0);
                const auto& b = in(1);
                size_t r = std::max(a.size(), b.size());
                out.assign(r, 1);
                for (size_t k = 0; k < r; ++k) {
                    int64_t da = k < r - a.size() ? 1 : a[k - (r - a.size())];
                    int64_t db = k < r - b.size() ? 1 : b[k - (r - b.size())];
                    if (da != db && da != 1 && db != 1) {
                        fail(fmt::format("shapes {} and {} do not broadcast", shape_str(a),
                                         shape_str(b)));
                    }
                    out[k] = std::max(da, db);
                }
                break;
            }
            case Op::kConcat: {
                out = in(0);
                int64_t axis = n.attrs.axis - 1;  // attrs.axis counts the batch dimension
                if (axis < 0 || axis >= static_cast<int64_t>(out.size())) {
                    fail("axis out of range");
                }
                for (size_t k = 1; k < n.inputs.size(); ++k) {
                    const auto& x = in(k);
                    if (x.size() != out.size()) {
                        fail("inputs of different ranks");
                    }
                    for (size_t d = 0; d < x.size(); ++d) {
                        if (static_cast<int64_t>(d) != axis && x[d] != out[d]) {
                            fail(fmt::format("shapes {} and {} differ off the concat axis",
                                             shape_str(out), shape_str(x)));
                        }
                    }
                    out[static_cast<size_t>(axis)] += x[static_cast<size_t>(axis)];
                }
                break;
            }
            case Op::kMaxPool:
            case Op::kAvgPool: {
                const auto& x = in(0);
                spatial_attrs_ok();
                const Attrs& a = n.attrs;
                if (x.size() != 3) {
                    fail("input is not [C, H, W]");
                }
                int64_t h = pool_out(x[1], a.kernel[0], a.stride[0], a.padding[0], a.dilation[0],
                                     a.ceil_mode);
                int64_t w = pool_out(x[2], a.kernel[1], a.stride[1], a.padding[1], a.dilation[1],
                                     a.ceil_mode);
                if (h < 1 || w < 1) {
                    fail("input " + shape_str(x) + " is too small for the pooling window");
                }
                out = {x[0], h, w};
                break;
            }
            case Op::kGlobalAvgPool: {
                const auto& x = in(0);
                if (x.size() != 3) {
                    fail("input is not [C, H, W]");
                }
                out = {x[0], 1, 1};
                break;
            }
            case Op::kFlatten: {
                const auto& x = in(0);
                int64_t axis = n.attrs.axis - 1;
                if (axis < 0 || axis > static_cast<int64_t>(x.size())) {
                    fail("axis out of range");
                }
                out.assign(x.begin(), x.begin() + axis);
                out.push_back(numel(std::vector<int64_t>(x.begin() + axis, x.end())));
                break;
            }
            case Op::kReshape: {
                const auto& x = in(0);
                out = n.attrs.shape;
                int64_t known = 1;
                int unknown = -1;
                for (size_t k = 0; k < out.size(); ++k) {
                    if (out[k] == -1) {
                        if (unknown >= 0) {
                            fail("more than one -1 in shape");
                        }
                        unknown = static_cast<int>(k);
                    } else if (out[k] < 1) {
                        fail("shape entries must be >= 1 or -1");
                    } else if (known > kMaxElements / out[k]) {
                        fail(fmt::format("shape {} has over 2^40 elements",
                                         shape_str(n.attrs.shape)));
                    } else {
                        known *= out[k];
                    }
                }
                if (unknown >= 0) {
                    out[static_cast<size_t>(unknown)] = numel(x) / known;
                }
                if (numel(out) != numel(x)) {
                    fail(fmt::format("cannot reshape {} to {}", shape_str(x),
                                     shape_str(n.attrs.shape)));
                }
                break;
            }
            case Op::kLinear: {
                const auto& x = in(0);
                const at::Tensor& w = param("weight");
                if (w.dim() != 2 || w.size(0) != n.attrs.out_channels) {
                    fail("weight is not [out_features, in_features]");
                }
                if (x.size() != 1 || x[0] != w.size(1)) {
                    // (A layer over the last axis of a larger value, e.g. an imported MatMul of
                    // [N, C, H, W], would export as an invalid Gemm and prune the wrong axis.)
                    fail(fmt::format("input {} is not [{}] (features; flatten it first)",
                                     shape_str(x), w.size(1)));
                }
                auto b = n.params.find("bias");
                if (b != n.params.end() && b->second.numel() != w.size(0)) {
                    fail("bias does not have out_features elements");
                }
                out = x;
                out.back() = w.size(0);
                break;
            }
        }
        // Every value has at least one element along each dimension and at most 2^40 in all (the
        // model files' bound), counted without overflowing.
        int64_t elements = 1;
        for (int64_t d : out) {
            if (d < 1 || elements > kMaxElements / d) {
                fail(fmt::format("output shape {} is empty or has over 2^40 elements",
                                 shape_str(out)));
            }
            elements *= d;
        }
        shapes[i] = std::move(out);
    }
    return shapes;
}

void Graph::validate() const {
    PF_CHECK(!nodes_.empty() && nodes_[0].op == Op::kInput, InputError,
             "invalid graph: node 0 must be the input");
    std::set<std::string> names;
    for (size_t i = 0; i < nodes_.size(); ++i) {
        const Node& n = nodes_[i];
        PF_CHECK(!n.name.empty() && n.name.find('.') == std::string::npos, InputError,
                 "invalid graph: node {} has an empty name or a '.' in it", i);
        PF_CHECK(names.insert(n.name).second, InputError, "invalid graph: duplicate node name {}",
                 n.name);
        for (int in : n.inputs) {
            PF_CHECK(in >= 0 && static_cast<size_t>(in) < i, InputError,
                     "invalid graph: node {} reads node {} which does not come before it", n.name,
                     in);
        }
        size_t arity = n.op == Op::kInput ? 0 : (n.op == Op::kAdd || n.op == Op::kMul) ? 2 : 1;
        if (n.op == Op::kConcat) {
            PF_CHECK(n.inputs.size() >= 2, InputError, "invalid graph: concat {} needs >= 2 inputs",
                     n.name);
        } else {
            PF_CHECK(n.inputs.size() == arity, InputError,
                     "invalid graph: node {} ({}) has {} inputs, expected {}", n.name,
                     op_name(n.op), n.inputs.size(), arity);
        }
        for (const auto* group : {&n.params, &n.buffers}) {
            for (const auto& [key, t] : *group) {
                const bool constraint =
                    group == &n.buffers && (key == "weight_mask" || key == "weight_index");
                PF_CHECK(t.defined() && (constraint || t.scalar_type() == at::kFloat), InputError,
                         "invalid graph: tensor {}.{} is not float32", n.name, key);
            }
        }
        validate_weight_constraints(n);
        const QuantSpec& q = n.quant;
        if (q.weight_bits != 0) {
            const bool layer = n.op == Op::kConv2d || n.op == Op::kLinear;
            PF_CHECK(layer && q.weight_bits >= 2 && q.weight_bits <= 8 && q.weight_qmax >= 1 &&
                         q.weight_qmax < (1 << (q.weight_bits - 1)) && n.params.count("bias") &&
                         n.buffers.count("weight_scale") &&
                         (n.buffers.at("weight_scale").numel() == 1 ||
                          n.buffers.at("weight_scale").numel() == n.params.at("weight").size(0)),
                     InputError,
                     "invalid graph: node {} has inconsistent weight quantization ({} bits, range "
                     "±{})",
                     n.name, q.weight_bits, q.weight_qmax);
        }
        if (q.weight_bits != 0) {
            const at::Tensor& s = n.buffers.at("weight_scale");
            PF_CHECK(at::isfinite(s).all().item<bool>() && (s > 0).all().item<bool>(), InputError,
                     "invalid graph: node {} has weight scales that are not finite and positive",
                     n.name);
        }
        if (q.act_bits != 0) {
            PF_CHECK(q.act_bits >= 2 && q.act_bits <= 8 && n.buffers.count("act_range") &&
                         n.buffers.at("act_range").numel() == 2,
                     InputError, "invalid graph: node {} has inconsistent activation quantization",
                     n.name);
            const at::Tensor& r = n.buffers.at("act_range");
            PF_CHECK(at::isfinite(r).all().item<bool>() && r[0].item<float>() <= r[1].item<float>(),
                     InputError, "invalid graph: node {} has an invalid activation range [{}, {}]",
                     n.name, r[0].item<float>(), r[1].item<float>());
        }
    }
    PF_CHECK(output_ > 0 && static_cast<size_t>(output_) < nodes_.size(), InputError,
             "invalid graph: output node {} out of range", output_);
    infer_shapes();
}

std::vector<LayerStats> Graph::layer_stats() const {
    auto shapes = infer_shapes();
    std::vector<LayerStats> stats;
    stats.reserve(nodes_.size());
    for (size_t i = 0; i < nodes_.size(); ++i) {
        const Node& n = nodes_[i];
        LayerStats s;
        s.name = n.name;
        s.op = n.op;
        s.out_shape = shapes[i];
        for (const auto& [key, t] : n.params) {
            s.params += t.numel();
        }
        if (n.op == Op::kConv2d) {
            const at::Tensor& w = n.params.at("weight");
            s.macs = numel(shapes[i]) * w.size(1) * w.size(2) * w.size(3);
        } else if (n.op == Op::kLinear) {
            const at::Tensor& w = n.params.at("weight");
            s.macs = numel(shapes[i]) / w.size(0) * w.numel();
        }
        stats.push_back(std::move(s));
    }
    return stats;
}

int64_t Graph::total_params() const {
    int64_t total = 0;
    for (const auto& s : layer_stats()) {
        total += s.params;
    }
    return total;
}

int64_t Graph::total_macs() const {
    int64_t total = 0;
    for (const auto& s : layer_stats()) {
        total += s.macs;
    }
    return total;
}

int64_t node_bytes(const Node& n) {
    int64_t bytes = 0;
    const bool coded = has_weight_constraints(n);
    for (const auto* group : {&n.params, &n.buffers}) {
        for (const auto& [key, t] : *group) {
            if (coded && (key == "weight" || key == "weight_mask" || key == "weight_index")) {
                continue;  // stored together, compressed (weight_codec.h)
            }
            bytes += key == "weight" && n.quant.weight_bits > 0
                         ? (t.numel() * n.quant.weight_bits + 7) / 8  // packed (quant.h)
                         : t.numel() * static_cast<int64_t>(t.element_size());
        }
    }
    if (coded) {
        bytes += static_cast<int64_t>(encode_weight(n).bytes.size());
    }
    return bytes;
}

int64_t Graph::weight_bytes() const {
    int64_t bytes = 0;
    for (const auto& n : nodes_) {
        bytes += node_bytes(n);
    }
    return bytes;
}

int64_t Graph::num_classes() const {
    auto shapes = infer_shapes();
    const auto& out = shapes[static_cast<size_t>(output_)];
    PF_CHECK(out.size() == 1, InputError,
             "the model's output {} is not a vector of class scores: shape [{}]",
             nodes_[static_cast<size_t>(output_)].name, fmt::join(out, ", "));
    return out[0];
}

Graph Graph::clone() const {
    Graph g = *this;
    for (auto& n : g.nodes_) {
        for (auto* group : {&n.params, &n.buffers}) {
            for (auto& [key, t] : *group) {
                t = t.detach().clone();
            }
        }
    }
    return g;
}

Graph fold_batch_norm(const Graph& graph) {
    const auto& nodes = graph.nodes();
    std::vector<int> readers(nodes.size(), 0);
    for (const auto& n : nodes) {
        for (int in : n.inputs) {
            ++readers[static_cast<size_t>(in)];
        }
    }
    Graph out(graph.input_shape());
    std::vector<int> remap(nodes.size(), 0);  // old node index -> new node index
    at::NoGradGuard no_grad;
    out.nodes()[0].quant = nodes[0].quant;  // a quantized input keeps its range
    for (const auto& [key, t] : nodes[0].buffers) {
        out.nodes()[0].buffers[key] = t.detach().clone();
    }
    for (size_t i = 1; i < nodes.size(); ++i) {
        const Node& n = nodes[i];
        const bool foldable =
            n.op == Op::kBatchNorm2d && nodes[static_cast<size_t>(n.inputs[0])].op == Op::kConv2d &&
            readers[static_cast<size_t>(n.inputs[0])] == 1 && n.inputs[0] != graph.output() &&
            !nodes[static_cast<size_t>(n.inputs[0])].quant.any() &&    // scales fit the weights
            !has_codebook(nodes[static_cast<size_t>(n.inputs[0])]) &&  // so do the centroids
            !n.quant.any();  // a quantized BN output keeps its node
        if (foldable) {
            // y = γ (W x + b − μ) / √(σ² + ε) + β: scale the conv's output rows, shift its bias.
            Node& conv = out.nodes()[static_cast<size_t>(remap[static_cast<size_t>(n.inputs[0])])];
            at::Tensor scale =
                n.params.at("weight") / at::sqrt(n.buffers.at("running_var") + n.attrs.eps);
            at::Tensor& w = conv.params.at("weight");
            at::Tensor b = conv.params.count("bias") ? conv.params.at("bias")
                                                     : at::zeros({w.size(0)}, w.options());
            w = w * scale.reshape({-1, 1, 1, 1});
            conv.params["bias"] = (b - n.buffers.at("running_mean")) * scale + n.params.at("bias");
            remap[i] = remap[static_cast<size_t>(n.inputs[0])];
            continue;
        }
        Node copy = n;
        for (auto* group : {&copy.params, &copy.buffers}) {
            for (auto& [key, t] : *group) {
                t = t.detach().clone();
            }
        }
        for (int& in : copy.inputs) {
            in = remap[static_cast<size_t>(in)];
        }
        remap[i] = out.add(std::move(copy));
    }
    out.set_output(remap[static_cast<size_t>(graph.output())]);
    return out;
}

std::vector<int> folded_convs(const Graph& graph) {
    const auto& nodes = graph.nodes();
    for (const auto& n : nodes) {
        if (n.op == Op::kBatchNorm2d) {
            return {};
        }
    }
    std::vector<int> convs;
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (nodes[i].op == Op::kConv2d && nodes[i].params.count("bias") != 0 &&
            static_cast<int>(i) != graph.output()) {
            convs.push_back(static_cast<int>(i));
        }
    }
    return convs;
}

Graph insert_batch_norm(const Graph& graph,
                        const std::vector<int>& convs,
                        const std::vector<at::Tensor>& mean,
                        const std::vector<at::Tensor>& var,
                        double eps) {
    PF_CHECK(convs.size() == mean.size() && convs.size() == var.size(), Error,
             "failed to insert BatchNorm: {} convs, {} means, {} variances", convs.size(),
             mean.size(), var.size());
    const auto& nodes = graph.nodes();
    Graph out(graph.input_shape());
    std::vector<int> remap(nodes.size(), 0);
    at::NoGradGuard no_grad;
    for (size_t i = 1; i < nodes.size(); ++i) {
        Node copy = nodes[i];
        for (auto* group : {&copy.params, &copy.buffers}) {
            for (auto& [key, t] : *group) {
                t = t.detach().clone();
            }
        }
        for (int& in : copy.inputs) {
            in = remap[static_cast<size_t>(in)];
        }
        auto at_conv = std::find(convs.begin(), convs.end(), static_cast<int>(i));
        if (at_conv == convs.end()) {
            remap[i] = out.add(std::move(copy));
            continue;
        }
        const size_t k = static_cast<size_t>(at_conv - convs.begin());
        PF_CHECK(copy.op == Op::kConv2d, Error, "failed to insert BatchNorm after {}: not a conv",
                 copy.name);
        // y = W x + b has mean μ and variance σ² per channel. The conv becomes k·W without bias
        // (y' = k·(y − b)), and BN with running mean k·(μ − b), running variance k²·σ²,
        // γ = √(k²σ² + ε)/k and β = μ gives back y exactly in eval mode, for any k > 0. A BN
        // network is invariant to the scale of W, but its effective learning rate is not (it
        // goes as lr/‖W‖²); the folded W carries the old BN's scale, arbitrary, so k rescales
        // the layer to the weight RMS of a fresh He initialisation (init_weights), the scale a
        // BN recipe's learning rate is tuned for. Relative filter norms stay as they were.
        at::Tensor m = mean[k].to(at::kFloat), v = var[k].to(at::kFloat).clamp_min(0);
        at::Tensor& w = copy.params.at("weight");
        at::Tensor b = copy.params.count("bias") ? copy.params.at("bias")
                                                 : at::zeros({w.size(0)}, w.options());
        PF_CHECK(m.numel() == w.size(0) && v.numel() == w.size(0), Error,
                 "failed to insert BatchNorm after {}: statistics of {} channels for {}", copy.name,
                 m.numel(), w.size(0));
        const double he = std::sqrt(2.0 / static_cast<double>(w.size(0) * w.size(2) * w.size(3)));
        const double rms = std::sqrt(w.pow(2).mean().item<double>());
        const double scale = rms > 0 ? he / rms : 1.0;
        w = (w * scale).contiguous();
        copy.params.erase("bias");
        std::string name = copy.name + "_bn";
        while (graph.find(name) >= 0 || out.find(name) >= 0) {
            name += "_";
        }
        const int conv = out.add(std::move(copy));
        Node bn;
        bn.name = name;
        bn.op = Op::kBatchNorm2d;
        bn.inputs = {conv};
        bn.attrs.eps = eps;
        bn.attrs.momentum = 0.1;
        at::Tensor running_var = v * (scale * scale);
        bn.buffers["running_mean"] = ((m - b) * scale).contiguous();
        bn.buffers["running_var"] = running_var.contiguous();
        bn.params["weight"] = (at::sqrt(running_var + eps) / scale).contiguous();
        bn.params["bias"] = m.clone();
        remap[i] = out.add(std::move(bn));
    }
    out.set_output(remap[static_cast<size_t>(graph.output())]);
    out.validate();
    return out;
}

void init_weights(Graph& graph, uint64_t seed) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    at::NoGradGuard no_grad;
    for (auto& n : graph.nodes()) {
        if (n.op == Op::kConv2d) {
            at::Tensor& w = n.params.at("weight");
            double fan_out = static_cast<double>(w.size(0) * w.size(2) * w.size(3));
            w.normal_(0.0, std::sqrt(2.0 / fan_out), gen);
            if (n.params.count("bias")) {
                n.params.at("bias").zero_();
            }
        } else if (n.op == Op::kLinear) {
            at::Tensor& w = n.params.at("weight");
            double bound = 1.0 / std::sqrt(static_cast<double>(w.size(1)));
            w.uniform_(-bound, bound, gen);
            if (n.params.count("bias")) {
                n.params.at("bias").uniform_(-bound, bound, gen);
            }
        } else if (n.op == Op::kBatchNorm2d) {
            n.params.at("weight").fill_(1.0);
            n.params.at("bias").zero_();
            n.buffers.at("running_mean").zero_();
            n.buffers.at("running_var").fill_(1.0);
        }
    }
}

}  // namespace pocketflow
