// SPDX-License-Identifier: Apache-2.0
// Uniform quantization on the graph IR: placement of the quantization points, fake quantization
// (what the int8 model computes, in float), range calibration and integer packing.
#include "pocketflow/quant.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "pocketflow/error.h"

namespace pocketflow {

namespace {

bool pass_through(Op op) {
    return op == Op::kMaxPool || op == Op::kFlatten || op == Op::kReshape || op == Op::kIdentity ||
           op == Op::kDropout;
}

bool is_layer(Op op) {
    return op == Op::kConv2d || op == Op::kLinear;
}

/// Per output channel: max |w| over the other dimensions (one value for per-tensor scales). A row
/// too small to quantize (all zeros: a filter that pruning or sparsity emptied) gets scale 1: its
/// integers are 0 at any scale, and its bias, quantized on input scale × weight scale, keeps a
/// usable grid (a 1e-8 scale saturated any bias above about 21 × the input scale).
at::Tensor weight_scales(const at::Tensor& w, bool per_channel, int qmax) {
    at::NoGradGuard no_grad;
    at::Tensor a = w.detach().abs().reshape({w.size(0), -1});
    at::Tensor m = per_channel ? std::get<0>(a.max(1)) : a.max().reshape({1});
    at::Tensor s = m.to(at::kDouble) / static_cast<double>(qmax);
    return at::where(s >= 1e-8, s, at::ones_like(s)).to(at::kFloat);
}

std::string why_float(Op op) {
    switch (op) {
        case Op::kConv2d:
        case Op::kLinear:
            return "not selected by `bits`";
        case Op::kBatchNorm2d:
            return "a BatchNorm that could not be folded into a conv";
        case Op::kAdd:
            return "an Add with a float input";
        default:
            return fmt::format("ONNX Runtime has no int8 kernel for {} here", op_name(op));
    }
}

}  // namespace

int weight_qmax(int bits, int qmax_8bit) {
    PF_CHECK(bits >= 2 && bits <= 8, InputError, "weight bits {} outside 2–8", bits);
    return bits == 8 ? qmax_8bit : (1 << (bits - 1)) - 1;
}

ActParams act_params(float lo, float hi, int bits) {
    ActParams p;
    p.qmax = (int64_t{1} << bits) - 1;
    const float l = std::min(lo, 0.0f), h = std::max(hi, 0.0f);
    p.scale = (h - l) / static_cast<float>(p.qmax);
    if (!(p.scale >= 1e-8f)) {
        p.scale = 1.0f;  // a value that is always 0: any scale, and its readers' biases keep a grid
    }
    p.zero_point =
        std::clamp<int64_t>(static_cast<int64_t>(std::nearbyint(-l / p.scale)), 0, p.qmax);
    return p;
}

ActParams act_params(const Node& node) {
    const at::Tensor& r = node.buffers.at("act_range");
    const float* v = r.data_ptr<float>();
    ActParams p = act_params(v[0], v[1], node.quant.act_bits);
    auto learned = node.params.find("act_scale");
    if (learned != node.params.end()) {
        p.scale = std::max(std::abs(learned->second.item<float>()), 1e-8f);  // as the forward
    }
    return p;
}

void enable_learned_ranges(Graph& graph) {
    for (auto& n : graph.nodes()) {
        if (n.quant.act_bits > 0) {
            n.params["act_scale"] = at::tensor({act_params(n).scale}, at::kFloat);
        }
    }
}

void freeze_learned_ranges(Graph& graph) {
    at::NoGradGuard no_grad;
    for (auto& n : graph.nodes()) {
        auto it = n.params.find("act_scale");
        if (it == n.params.end()) {
            continue;
        }
        const ActParams p = act_params(n);
        const float lo = -static_cast<float>(p.zero_point) * p.scale;
        const float hi = static_cast<float>(p.qmax - p.zero_point) * p.scale;
        n.buffers.at("act_range").copy_(at::tensor({lo, hi}, at::kFloat));
        n.params.erase(it);
    }
}

bool is_quantized(const Graph& graph) {
    for (const auto& n : graph.nodes()) {
        if (n.quant.any()) {
            return true;
        }
    }
    return false;
}

std::vector<int> quantized_values(const Graph& graph) {
    const auto& nodes = graph.nodes();
    std::vector<int> src(nodes.size(), -1);
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (nodes[i].quant.act_bits > 0) {
            src[i] = static_cast<int>(i);
        } else if (pass_through(nodes[i].op) && !nodes[i].inputs.empty()) {
            src[i] = src[static_cast<size_t>(nodes[i].inputs[0])];
        }
    }
    return src;
}

QuantReport prepare_quantization(Graph& graph, const QuantizeOptions& options) {
    auto& nodes = graph.nodes();
    const size_t count = nodes.size();
    std::vector<std::vector<int>> readers(count);
    for (size_t i = 0; i < count; ++i) {
        for (int in : nodes[i].inputs) {
            readers[static_cast<size_t>(in)].push_back(static_cast<int>(i));
        }
    }
    auto source = [&](int v) {
        while (pass_through(nodes[static_cast<size_t>(v)].op)) {
            v = nodes[static_cast<size_t>(v)].inputs[0];
        }
        return v;
    };
    // The value a runtime quantizes after node i: its ReLU/Clip when that is its only reader.
    auto fused_out = [&](int i) {
        const auto& r = readers[static_cast<size_t>(i)];
        if (i != graph.output() && r.size() == 1) {
            const Op op = nodes[static_cast<size_t>(r[0])].op;
            if (op == Op::kReLU || op == Op::kClip) {
                return r[0];
            }
        }
        return i;
    };
    std::vector<int> bits(count, 0);
    auto need = [&](int v, int b) {
        if (v != graph.output()) {
            bits[static_cast<size_t>(v)] = std::max(bits[static_cast<size_t>(v)], b);
        }
    };
    QuantReport report;
    for (const auto& [name, lb] : options.layers) {
        const int i = graph.find(name);
        PF_CHECK(i >= 0, InputError, "cannot quantize {}: no such node", name);
        Node& n = nodes[static_cast<size_t>(i)];
        PF_CHECK(is_layer(n.op), InputError,
                 "cannot quantize {}: it is a {}, only Conv2d and Linear have weights to quantize",
                 name, op_name(n.op));
        PF_CHECK(lb.activations >= 2 && lb.activations <= 8, InputError,
                 "cannot quantize {}: activation bits {} outside 2–8", name, lb.activations);
        n.quant.weight_bits = lb.weights;
        n.quant.weight_qmax = weight_qmax(lb.weights, options.qmax_8bit);
        at::Tensor& w = n.params.at("weight");
        n.buffers["weight_scale"] = weight_scales(w, options.per_channel, n.quant.weight_qmax);
        if (n.params.count("bias") == 0) {
            n.params["bias"] = at::zeros({w.size(0)}, w.options());
        }
        need(source(n.inputs[0]), lb.activations);
        need(fused_out(i), lb.activations);
        report.layers.push_back(name);
    }
    // Residual Adds of quantized values and global average pools of one run in int8 too.
    for (size_t i = 1; i < count; ++i) {
        const Node& n = nodes[i];
        int b = 0;
        bool all = !n.inputs.empty();
        for (int in : n.inputs) {
            const int v = bits[static_cast<size_t>(source(in))];
            all = all && v > 0;
            b = std::max(b, v);
        }
        if (all && n.op == Op::kAdd) {
            need(fused_out(static_cast<int>(i)), b);
        } else if (all && n.op == Op::kGlobalAvgPool) {
            need(static_cast<int>(i), b);
        }
    }
    // The bits of each quantized value: the widest input bits of the quantized layers that read
    // it (through pass-through ops). A value no quantized layer reads (a conv output going into a
    // residual Add, the last Add's output going into the pool) takes the bits of what it is
    // computed from: its layer's input bits, the widest input of its Add, its pool's input.
    std::map<int, int> layer_bits;
    for (const auto& [name, lb] : options.layers) {
        layer_bits[graph.find(name)] = lb.activations;
    }
    std::function<int(int)> read_bits = [&](int v) {
        int b = 0;
        for (int r : readers[static_cast<size_t>(v)]) {
            auto it = layer_bits.find(r);
            if (it != layer_bits.end() && nodes[static_cast<size_t>(r)].inputs[0] == v) {
                b = std::max(b, it->second);
            } else if (pass_through(nodes[static_cast<size_t>(r)].op)) {
                b = std::max(b, read_bits(r));
            }
        }
        return b;
    };
    std::vector<int> value_bits(count, 0);
    for (size_t i = 0; i < count; ++i) {
        if (bits[i] == 0) {
            continue;
        }
        int b = read_bits(static_cast<int>(i));
        if (b == 0) {
            const Node& n = nodes[i];
            const int from =
                (n.op == Op::kReLU || n.op == Op::kClip) ? n.inputs[0] : static_cast<int>(i);
            const Node& p = nodes[static_cast<size_t>(from)];
            auto it = layer_bits.find(from);
            if (it != layer_bits.end()) {
                b = it->second;
            } else if (p.op == Op::kAdd || p.op == Op::kGlobalAvgPool) {
                for (int in : p.inputs) {
                    b = std::max(b, value_bits[static_cast<size_t>(source(in))]);
                }
            }
        }
        value_bits[i] = b > 0 ? b : bits[i];
    }
    for (size_t i = 0; i < count; ++i) {
        if (value_bits[i] > 0) {
            nodes[i].quant.act_bits = value_bits[i];
            nodes[i].buffers["act_range"] = at::zeros({2}, at::kFloat);
        }
    }
    // Nodes that read a quantized value and neither run in int8 nor feed one that does.
    for (size_t i = 1; i < count; ++i) {
        const Node& n = nodes[i];
        bool reads_quantized = false;
        for (int in : n.inputs) {
            reads_quantized = reads_quantized || bits[static_cast<size_t>(source(in))] > 0;
        }
        const bool int8 = n.quant.weight_bits > 0 || pass_through(n.op) || bits[i] > 0 ||
                          bits[static_cast<size_t>(fused_out(static_cast<int>(i)))] > 0;
        if (reads_quantized && !int8) {
            report.float_nodes.emplace_back(n.name, why_float(n.op));
        }
    }
    return report;
}

at::Tensor quantized_weight(Node& node, bool training) {
    const at::Tensor& w = node.params.at("weight");
    at::Tensor& s = node.buffers.at("weight_scale");
    const int qmax = node.quant.weight_qmax;
    if (training) {
        s.copy_(weight_scales(w, s.numel() > 1, qmax));
    }
    if (s.numel() == 1) {
        return at::fake_quantize_per_tensor_affine(w, s.item<float>(), 0, -qmax, qmax);
    }
    at::Tensor zero = at::zeros({s.numel()}, at::kInt);
    return at::fake_quantize_per_channel_affine(w, s, zero, 0, -qmax, qmax);
}

at::Tensor weight_ints(const Node& node) {
    at::NoGradGuard no_grad;
    Node copy = node;  // shares tensors; eval mode leaves them untouched
    at::Tensor w = quantized_weight(copy, false).detach();
    std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
    shape[0] = -1;
    const at::Tensor& s = node.buffers.at("weight_scale");
    return at::round(w / s.reshape(shape)).to(at::kInt).contiguous();
}

std::pair<at::Tensor, at::Tensor> bias_ints(const Node& node, float input_scale) {
    at::NoGradGuard no_grad;
    const at::Tensor& s = node.buffers.at("weight_scale");
    const int64_t c = node.params.at("weight").size(0);
    at::Tensor scale = (s.expand({c}) * input_scale).contiguous();  // float32, as stored
    // In double: float32 cannot hold 2^31 - 1, and a tiny scale (a dead channel or input) would
    // otherwise wrap around to INT_MIN.
    at::Tensor q =
        at::round(node.params.at("bias").detach().to(at::kDouble) / scale.to(at::kDouble))
            .clamp(-2147483648.0, 2147483647.0);
    return {q.to(at::kInt), scale};
}

at::Tensor quantized_bias(const Node& node, float input_scale) {
    const at::Tensor& b = node.params.at("bias");
    auto [q, scale] = bias_ints(node, input_scale);
    return b + (q.to(at::kFloat) * scale - b).detach();
}

at::Tensor quantize_activation(Node& node, const at::Tensor& x, bool training, double momentum) {
    auto learned = node.params.find("act_scale");
    if (learned != node.params.end()) {
        const ActParams p = act_params(node);
        const double features = static_cast<double>(x.numel() / std::max<int64_t>(1, x.size(0)));
        at::Tensor zero = at::full({1}, static_cast<double>(p.zero_point), at::kFloat);
        return at::_fake_quantize_learnable_per_tensor_affine(
            x, learned->second.abs().clamp_min(1e-8), zero, 0, p.qmax,
            1.0 / std::sqrt(features * static_cast<double>(p.qmax)));
    }
    if (training) {
        at::NoGradGuard no_grad;
        at::Tensor& r = node.buffers.at("act_range");
        auto [lo, hi] = at::aminmax(x.detach());
        at::Tensor batch = at::stack({lo, hi}).to(at::kFloat);
        if (r.abs().sum().item<float>() == 0) {
            r.copy_(batch);
        } else {
            r.mul_(1 - momentum).add_(batch, momentum);
        }
    }
    const ActParams p = act_params(node);
    return at::fake_quantize_per_tensor_affine(x, p.scale, p.zero_point, 0, p.qmax);
}

void snap_quantized_weights(Graph& graph) {
    at::NoGradGuard no_grad;
    for (auto& n : graph.nodes()) {
        if (n.quant.weight_bits > 0) {
            // Scales from the final weights (QAT's last step changed them after its forward).
            n.params.at("weight").copy_(quantized_weight(n, true));
        }
    }
}

std::pair<float, float> choose_range(
    const at::Tensor& sample, float lo, float hi, int bits, RangeMethod method, double percentile) {
    if (method == RangeMethod::kMinMax || sample.numel() == 0) {
        return {lo, hi};
    }
    at::Tensor x = sample.to(at::kFloat).flatten();
    if (method == RangeMethod::kPercentile) {
        at::Tensor sorted = std::get<0>(x.sort());
        auto at_q = [&](double q) {
            const auto k = static_cast<int64_t>(q * static_cast<double>(sorted.numel() - 1));
            return sorted[k].item<float>();
        };
        const double q = percentile / 100.0;
        return {lo < 0 ? std::max(lo, at_q(1 - q)) : lo, hi > 0 ? std::min(hi, at_q(q)) : hi};
    }
    // MSE: shrink the range towards zero in 1% steps; keep the clipping with the least error.
    std::pair<float, float> best{lo, hi};
    double best_err = std::numeric_limits<double>::infinity();
    for (int step = 100; step >= 20; --step) {
        const float f = static_cast<float>(step) / 100.0f;
        const ActParams p = act_params(lo * f, hi * f, bits);
        at::Tensor y = at::fake_quantize_per_tensor_affine(x, p.scale, p.zero_point, 0, p.qmax);
        const double err = (y - x).pow(2).mean().item<double>();
        if (err < best_err) {
            best_err = err;
            best = {lo * f, hi * f};
        }
    }
    return best;
}

int64_t packed_bytes(int64_t count, int bits) {
    return (count * bits + 7) / 8;
}

std::string pack_ints(const at::Tensor& ints, int bits) {
    at::Tensor q = ints.to(at::kInt).contiguous().flatten();
    const int32_t* v = q.data_ptr<int32_t>();
    const int64_t n = q.numel();
    const int32_t offset = 1 << (bits - 1);
    std::string out(static_cast<size_t>(packed_bytes(n, bits)), '\0');
    uint64_t acc = 0;
    int filled = 0;
    size_t pos = 0;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t u = v[i] + offset;
        PF_CHECK(u >= 0 && u < (1 << bits), Error, "value {} does not fit {} bits", v[i], bits);
        acc |= static_cast<uint64_t>(u) << filled;
        filled += bits;
        while (filled >= 8) {
            out[pos++] = static_cast<char>(acc & 0xff);
            acc >>= 8;
            filled -= 8;
        }
    }
    if (filled > 0) {
        out[pos] = static_cast<char>(acc & 0xff);
    }
    return out;
}

at::Tensor unpack_ints(const char* bytes, size_t size, int64_t count, int bits) {
    PF_CHECK(static_cast<int64_t>(size) >= packed_bytes(count, bits), Error,
             "{} packed bytes cannot hold {} values of {} bits", size, count, bits);
    at::Tensor q = at::empty({count}, at::kInt);
    int32_t* v = q.data_ptr<int32_t>();
    const int32_t offset = 1 << (bits - 1);
    const uint64_t mask = (uint64_t{1} << bits) - 1;
    uint64_t acc = 0;
    int filled = 0;
    size_t pos = 0;
    for (int64_t i = 0; i < count; ++i) {
        while (filled < bits) {
            acc |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[pos++])) << filled;
            filled += 8;
        }
        v[i] = static_cast<int32_t>(acc & mask) - offset;
        acc >>= bits;
        filled -= bits;
    }
    return q;
}

}  // namespace pocketflow
