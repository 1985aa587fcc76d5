// SPDX-License-Identifier: Apache-2.0
// Execution of a Graph as a torch::nn::Module: training through LibTorch's functional ops,
// inference with in-place ReLU/Add and cached oneDNN convolutions.
#include "pocketflow/model.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include <ATen/ATen.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"

#include "onednn_conv.h"

namespace pocketflow {

// ------------------------------------------------------------------------------------------------
// Execution

namespace {

/// Whether `global_average_pool` takes this input: float, channels-last, small (the inference
/// path of a network's head; bigger inputs keep ATen's parallel kernel).
bool small_channels_last(const at::Tensor& x) {
    return x.dim() == 4 && x.is_cpu() && x.scalar_type() == at::kFloat &&
           x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.numel() <= (int64_t{1} << 20);
}

/// Global average pooling at inference in one pass over the values in the order they lie: ATen's
/// adaptive_avg_pool2d spends about 4 µs on dispatch and setup, 2% of ResNet-20 at batch 1.
at::Tensor global_average_pool(const at::Tensor& x) {
    const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
    at::Tensor y = at::empty({n, c, 1, 1}, x.options());
    const float* in = x.data_ptr<float>();
    float* out = y.data_ptr<float>();
    const float scale = 1.0f / static_cast<float>(hw);
    for (int64_t b = 0; b < n; ++b, out += c) {
        std::fill(out, out + c, 0.0f);
        for (int64_t k = 0; k < hw; ++k, in += c) {
            for (int64_t j = 0; j < c; ++j) {
                out[j] += in[j];
            }
        }
        for (int64_t j = 0; j < c; ++j) {
            out[j] *= scale;
        }
    }
    return y;
}

/// Whether `small_linear` takes this layer and input: a float classifier head small enough that
/// BLAS's setup outweighs its arithmetic (at most 64k multiply-adds).
bool is_small_linear(const Node& n, const at::Tensor& x) {
    const at::Tensor& w = n.params.at("weight");
    auto b = n.params.find("bias");
    return x.dim() == 2 && x.is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() &&
           w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() &&
           x.size(1) == w.size(1) && x.size(0) * w.numel() <= 65536 &&
           (b == n.params.end() || (b->second.scalar_type() == at::kFloat &&
                                    b->second.is_contiguous() && b->second.numel() == w.size(0)));
}

/// y = x·wᵀ + b at inference for a small layer, as plain dot products: at::linear costs about
/// 2.5 µs for ResNet-20's 64→10 head at batch 1 (1.5% of the network), nearly all of it setup.
at::Tensor small_linear(const Node& n, const at::Tensor& x) {
    const at::Tensor& w = n.params.at("weight");
    auto b = n.params.find("bias");
    const int64_t batch = x.size(0), in = w.size(1), out = w.size(0);
    at::Tensor y = at::empty({batch, out}, x.options());
    const float* xs = x.data_ptr<float>();
    const float* ws = w.data_ptr<float>();
    const float* bs = b == n.params.end() ? nullptr : b->second.data_ptr<float>();
    float* ys = y.data_ptr<float>();
    for (int64_t r = 0; r < batch; ++r) {
        for (int64_t j = 0; j < out; ++j) {
            const float* row = ws + j * in;
            float acc = 0.0f;
            for (int64_t k = 0; k < in; ++k) {
                acc += row[k] * xs[r * in + k];
            }
            ys[r * out + j] = acc + (bs != nullptr ? bs[j] : 0.0f);
        }
    }
    return y;
}

}  // namespace

at::Tensor run_node(const Node& n, const std::vector<at::Tensor>& in, bool training) {
    auto opt = [&](const char* key) -> at::Tensor {
        auto it = n.params.find(key);
        return it == n.params.end() ? at::Tensor() : it->second;
    };
    const Attrs& a = n.attrs;
    switch (n.op) {
        case Op::kInput:
            return in.at(0);
        case Op::kConv2d:
            if (!training && !at::GradMode::is_enabled() && at::hasMKLDNN() && in[0].is_cpu() &&
                in[0].scalar_type() == at::kFloat) {
                // Inference: oneDNN for every batch size. at::conv2d picks the im2col + GEMM path
                // below batch 16, several times slower at batch 1 (docs/performance.md).
                return at::mkldnn_convolution(in[0], n.params.at("weight"), opt("bias"), a.padding,
                                              a.stride, a.dilation, a.groups);
            }
            return at::conv2d(in[0], n.params.at("weight"), opt("bias"), a.stride, a.padding,
                              a.dilation, a.groups);
        case Op::kBatchNorm2d:
            if (training && dist::sync_batch_norm()) {
                return dist::sync_batch_norm(in[0], n.params.at("weight"), n.params.at("bias"),
                                             n.buffers.at("running_mean"),
                                             n.buffers.at("running_var"), a.momentum, a.eps);
            }
            return at::batch_norm(in[0], n.params.at("weight"), n.params.at("bias"),
                                  n.buffers.at("running_mean"), n.buffers.at("running_var"),
                                  training, a.momentum, a.eps, true);
        case Op::kReLU:
            return at::relu(in[0]);
        case Op::kClip:
            if (a.min == 0.0 && a.max == 6.0) {
                return at::hardtanh(in[0], 0.0, 6.0);
            }
            return at::clamp(in[0], a.min, a.max);
        case Op::kSigmoid:
            return at::sigmoid(in[0]);
        case Op::kHardSigmoid:
            return at::clamp(in[0] * a.alpha + a.beta, 0.0, 1.0);
        case Op::kHardSwish:
            return at::hardswish(in[0]);
        case Op::kAdd:
            return at::add(in[0], in[1]);
        case Op::kMul:
            return at::mul(in[0], in[1]);
        case Op::kConcat:
            return at::cat(in, a.axis);
        case Op::kMaxPool:
            return at::max_pool2d(in[0], a.kernel, a.stride, a.padding, a.dilation, a.ceil_mode);
        case Op::kAvgPool:
            return at::avg_pool2d(in[0], a.kernel, a.stride, a.padding, a.ceil_mode,
                                  a.count_include_pad);
        case Op::kGlobalAvgPool:
            return at::adaptive_avg_pool2d(in[0], {1, 1});
        case Op::kFlatten:
            return at::flatten(in[0], a.axis);
        case Op::kReshape: {
            std::vector<int64_t> shape = {in[0].size(0)};
            shape.insert(shape.end(), a.shape.begin(), a.shape.end());
            return at::reshape(in[0], shape);
        }
        case Op::kLinear:
            return at::linear(in[0], n.params.at("weight"), opt("bias"));
        case Op::kDropout:
            return at::dropout(in[0], a.p, training);
        case Op::kIdentity:
            return in[0];
    }
    throw Error(fmt::format("node {}: unsupported op", n.name));
}

std::string normalisation_problem(const ModelMeta& meta, int64_t channels) {
    if (meta.mean.size() != meta.std.size()) {
        return fmt::format("mean has {} values but std has {}", meta.mean.size(), meta.std.size());
    }
    const size_t n = meta.mean.size();
    if (n > 1 && static_cast<int64_t>(n) != channels) {
        return fmt::format("mean and std have {} values for an input of {} channels", n, channels);
    }
    for (size_t c = 0; c < n; ++c) {
        if (!std::isfinite(meta.mean[c])) {
            return fmt::format("mean[{}] is {}", c, meta.mean[c]);
        }
        if (!std::isfinite(meta.std[c]) || meta.std[c] <= 0) {
            return fmt::format("std[{}] is {}: a standard deviation must be above 0", c,
                               meta.std[c]);
        }
    }
    return "";
}

Model::Model(Graph graph, ModelMeta meta) : graph_(std::move(graph)), meta_(std::move(meta)) {
    graph_.validate();
    for (auto& n : graph_.nodes()) {
        if (n.params.empty() && n.buffers.empty()) {
            continue;
        }
        if (n.op == Op::kConv2d) {
            // Channels-last (NHWC) lets oneDNN run convolutions without layout reorders: about 1.3x
            // faster training on CPU (docs/performance.md). set_data keeps the tensor's identity,
            // so the graph and the module still share it.
            at::Tensor& w = n.params.at("weight");
            w.set_data(w.contiguous(at::MemoryFormat::ChannelsLast));
        }
        auto holder = register_module(n.name, std::make_shared<torch::nn::Module>());
        for (auto& [key, t] : n.params) {
            holder->register_parameter(key, t);
        }
        for (auto& [key, t] : n.buffers) {
            holder->register_buffer(key, t);
        }
    }
    const auto& nodes = graph_.nodes();
    last_use_.assign(nodes.size(), -1);
    for (size_t i = 0; i < nodes.size(); ++i) {
        for (int in : nodes[i].inputs) {
            last_use_[static_cast<size_t>(in)] = static_cast<int>(i);
        }
    }
    last_use_[static_cast<size_t>(graph_.output())] = static_cast<int>(nodes.size());
    if (ConvCache::available()) {
        conv_cache_ = std::make_shared<ConvCache>();
    }
    std::vector<int> readers(nodes.size(), 0), reader(nodes.size(), -1);
    for (size_t i = 0; i < nodes.size(); ++i) {
        for (int in : nodes[i].inputs) {
            ++readers[static_cast<size_t>(in)];
            reader[static_cast<size_t>(in)] = static_cast<int>(i);
        }
    }
    fused_relu_.assign(nodes.size(), -1);
    fused_add_.assign(nodes.size(), -1);
    add_relu_.assign(nodes.size(), -1);
    // Fusions skip quantized nodes: their values are rounded between the fused ops.
    auto only_reader_is = [&](size_t i, Op op) {
        return readers[i] == 1 && static_cast<int>(i) != graph_.output() &&
               nodes[static_cast<size_t>(reader[i])].op == op && !nodes[i].quant.any() &&
               !nodes[static_cast<size_t>(reader[i])].quant.any();
    };
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (nodes[i].op == Op::kConv2d &&
            (only_reader_is(i, Op::kReLU) || only_reader_is(i, Op::kClip)) &&
            ConvCache::fusable_activation(nodes[static_cast<size_t>(reader[i])])) {
            fused_relu_[i] = reader[i];
        }
        if (nodes[i].op == Op::kConv2d && only_reader_is(i, Op::kAdd)) {
            // The Add's other operand must be computed before this conv (and not be the conv).
            // It is overwritten when the conv runs, so every other reader of it must come before
            // the conv (a branch between the conv and the Add would read the sum).
            const Node& add = nodes[static_cast<size_t>(reader[i])];
            const int other = add.inputs[0] == static_cast<int>(i) ? add.inputs[1] : add.inputs[0];
            bool read_between = false;
            for (int m = static_cast<int>(i) + 1; m < reader[i]; ++m) {
                const auto& in = nodes[static_cast<size_t>(m)].inputs;
                read_between = read_between || std::find(in.begin(), in.end(), other) != in.end();
            }
            const int add_reader = readers[static_cast<size_t>(reader[i])] == 1
                                       ? reader[static_cast<size_t>(reader[i])]
                                       : -1;
            const bool quantized =
                add_reader >= 0 && nodes[static_cast<size_t>(add_reader)].quant.any();
            if (other != static_cast<int>(i) && other < static_cast<int>(i) && !read_between &&
                !quantized) {
                fused_add_[i] = reader[i];
            }
        }
        if (nodes[i].op == Op::kAdd && only_reader_is(i, Op::kReLU)) {
            add_relu_[i] = reader[i];
        }
    }
    shapes_ = graph_.infer_shapes();
    act_source_ = quantized_values(graph_);
    // Values that may share storage with another value: the model input, and whatever feeds or
    // comes out of an op that can return its input or a view of it.
    shares_storage_.assign(nodes.size(), false);
    shares_storage_[0] = true;
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Op op = nodes[i].op;
        if (op == Op::kIdentity || op == Op::kDropout || op == Op::kFlatten || op == Op::kReshape) {
            shares_storage_[i] = true;
            for (int in : nodes[i].inputs) {
                shares_storage_[static_cast<size_t>(in)] = true;
            }
        }
    }
}

bool Model::can_overwrite(const Node& n,
                          size_t i,
                          const std::vector<int>& capture,
                          const std::vector<at::Tensor>& args) const {
    if ((n.op != Op::kReLU && n.op != Op::kAdd) ||
        shares_storage_[static_cast<size_t>(n.inputs[0])] ||
        last_use_[static_cast<size_t>(n.inputs[0])] != static_cast<int>(i) ||
        std::find(capture.begin(), capture.end(), n.inputs[0]) != capture.end()) {
        return false;  // the input, a captured value, one read later or a view's base stays intact
    }
    // Add: the sum must have the first input's shape (no broadcasting into it).
    return n.op == Op::kReLU || (n.inputs[1] != n.inputs[0] && args[0].sizes() == args[1].sizes());
}

at::Tensor Model::run_quantized_layer(size_t i, const at::Tensor& x, bool training) {
    Node& n = graph_.nodes()[i];
    at::Tensor w = quantized_weight(n, training);
    const int src = act_source_[static_cast<size_t>(n.inputs[0])];
    at::Tensor b = n.params.at("bias");
    if (src >= 0 && act_quant_) {
        b = quantized_bias(n, act_params(graph_.nodes()[static_cast<size_t>(src)]).scale);
    }
    const Attrs& a = n.attrs;
    return n.op == Op::kConv2d ? at::conv2d(x, w, b, a.stride, a.padding, a.dilation, a.groups)
                               : at::linear(x, w, b);
}

at::Tensor Model::forward(const at::Tensor& input) {
    std::vector<at::Tensor> none;
    return forward_capture(input, {}, none);
}

at::Tensor Model::forward_capture(const at::Tensor& input,
                                  const std::vector<int>& capture,
                                  std::vector<at::Tensor>& captured) {
    const auto& nodes = graph_.nodes();
    const auto& shape = graph_.input_shape();
    PF_CHECK(input.dim() == 4 && input.size(1) == shape[0] && input.size(2) == shape[1] &&
                 input.size(3) == shape[2],
             InputError, "model expects input [N, {}, {}, {}], got [{}]", shape[0], shape[1],
             shape[2], fmt::join(input.sizes().vec(), ", "));
    std::vector<at::Tensor> values(nodes.size());
    std::vector<at::Tensor> args;
    captured.assign(capture.size(), at::Tensor());
    const bool training = is_training();
    const bool in_place = !training && !at::GradMode::is_enabled();
    if (conv_cache_ && !in_place) {
        // A forward that may precede a weight update (an optimizer step does not always bump
        // the tensors' version counters): the packed weights are refreshed at the next inference.
        conv_cache_->invalidate();
    }
    // The cached convolutions serve one forward at a time (their memory objects and output
    // buffers are per node); an inference on another thread meanwhile computes without them.
    std::unique_lock<std::mutex> cache_lock;
    ConvCache* cache = nullptr;
    if (conv_cache_ && in_place) {
        cache_lock = std::unique_lock<std::mutex>(conv_cache_->mutex(), std::try_to_lock);
        cache = cache_lock.owns_lock() ? conv_cache_.get() : nullptr;
    }
    values[0] = input.contiguous(at::MemoryFormat::ChannelsLast);
    if (nodes[0].quant.act_bits > 0 && act_quant_) {
        values[0] = quantize_activation(graph_.nodes()[0], values[0], training, range_momentum_);
    }
    // fused_from[j] = i: node j (a ReLU or residual Add) was computed by conv i's primitive; its
    // value is node i's.
    std::vector<int> fused_from(nodes.size(), -1);
    auto captured_node = [&](int i) {
        return std::find(capture.begin(), capture.end(), i) != capture.end();
    };
    for (size_t i = 1; i < nodes.size(); ++i) {
        const Node& n = nodes[i];
        args.clear();
        for (int in : n.inputs) {
            args.push_back(values[static_cast<size_t>(in)]);
        }
        const int id = static_cast<int>(i);
        if (fused_from[i] >= 0) {
            values[i] = values[static_cast<size_t>(fused_from[i])];
        } else if (n.quant.weight_bits > 0) {
            values[i] = run_quantized_layer(i, args[0], training);
        } else if (!in_place && has_weight_constraints(n)) {
            // Training: the layer computes with the masked / codebook weight, so gradients reach
            // only unmasked weights, and each centroid gets the sum of its weights' gradients.
            const Attrs& a = n.attrs;
            const at::Tensor w = constrained_weight(n);
            auto b = n.params.find("bias");
            const at::Tensor bias = b == n.params.end() ? at::Tensor() : b->second;
            values[i] = n.op == Op::kConv2d ? at::conv2d(args[0], w, bias, a.stride, a.padding,
                                                         a.dilation, a.groups)
                                            : at::linear(args[0], w, bias);
        } else if (cache != nullptr && ConvCache::supports(n, args[0])) {
            // Inference: a cached oneDNN primitive with packed weights; a residual Add (into the
            // other operand, when nothing else needs it) and a ReLU after it are fused.
            const int add = fused_add_[i];
            at::Tensor* sum_into = nullptr;
            if (add >= 0 && !captured_node(id) && !captured_node(add)) {
                const Node& a = nodes[static_cast<size_t>(add)];
                const int other = a.inputs[0] == id ? a.inputs[1] : a.inputs[0];
                at::Tensor& v = values[static_cast<size_t>(other)];
                const auto& want = shapes_[i];  // without the batch
                if (!shares_storage_[static_cast<size_t>(other)] &&
                    last_use_[static_cast<size_t>(other)] == add && !captured_node(other) &&
                    v.defined() && v.scalar_type() == at::kFloat &&
                    v.dim() == static_cast<int64_t>(want.size()) + 1 &&
                    v.size(0) == args[0].size(0) &&
                    std::equal(want.begin(), want.end(), v.sizes().begin() + 1) &&
                    v.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                    !v.is_alias_of(args[0])) {  // never the conv's own input
                    sum_into = &v;
                }
            }
            if (sum_into != nullptr) {
                const int relu = add_relu_[static_cast<size_t>(add)];
                values[i] =
                    cache->run(id, n, args[0],
                               relu >= 0 ? &nodes[static_cast<size_t>(relu)] : nullptr, sum_into);
                fused_from[static_cast<size_t>(add)] = id;
                if (relu >= 0) {
                    fused_from[static_cast<size_t>(relu)] = add;
                }
            } else {
                const int relu = fused_relu_[i];
                const bool fuse = relu >= 0 && !captured_node(id);
                values[i] =
                    cache->run(id, n, args[0], fuse ? &nodes[static_cast<size_t>(relu)] : nullptr);
                if (fuse) {
                    fused_from[static_cast<size_t>(relu)] = id;
                }
            }
        } else if (in_place && n.op == Op::kGlobalAvgPool && small_channels_last(args[0])) {
            values[i] = global_average_pool(args[0]);
        } else if (in_place && n.op == Op::kLinear && is_small_linear(n, args[0])) {
            values[i] = small_linear(n, args[0]);
        } else if (in_place && can_overwrite(n, i, capture, args)) {
            // Inference: ReLU and residual Add overwrite an input no later node reads.
            at::Tensor& v = values[static_cast<size_t>(n.inputs[0])];
            values[i] = n.op == Op::kReLU ? v.relu_() : v.add_(args[1]);
        } else {
            values[i] = run_node(n, args, training);
        }
        if (n.quant.act_bits > 0 && act_quant_) {
            values[i] =
                quantize_activation(graph_.nodes()[i], values[i], training, range_momentum_);
        }
        for (size_t c = 0; c < capture.size(); ++c) {
            if (capture[c] == static_cast<int>(i)) {
                captured[c] = values[i];
            }
        }
        // Drop values no later node reads, so peak memory follows the live set, not the graph.
        for (int in : n.inputs) {
            if (last_use_[static_cast<size_t>(in)] == static_cast<int>(i)) {
                values[static_cast<size_t>(in)].reset();
            }
        }
    }
    return values[static_cast<size_t>(graph_.output())];
}

}  // namespace pocketflow
