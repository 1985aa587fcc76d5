// SPDX-License-Identifier: Apache-2.0
#include "onednn_conv.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "pocketflow/cpu.h"
#include "pocketflow/error.h"

#ifdef POCKETFLOW_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace pocketflow {

#ifdef POCKETFLOW_HAVE_ONEDNN

namespace {

using dnnl::memory;

memory::dims dims_of(at::IntArrayRef sizes) {
    return memory::dims(sizes.begin(), sizes.end());
}

bool same(const std::vector<int64_t>& v, at::IntArrayRef sizes) {
    return std::equal(v.begin(), v.end(), sizes.begin(), sizes.end());
}

/// Float32 channels per SIMD register of this CPU when oneDNN has a blocked layout for it (16 or
/// 8), else 0.
int64_t simd_block() {
    static const int64_t block = [] {
        const int64_t b = cpu_target("native").channel_block;
        return b == 16 || b == 8 ? b : int64_t{0};
    }();
    return block;
}

/// Outputs up to this size keep their buffer between calls (reused when nothing else holds it):
/// an allocation is a measurable part of a small convolution at batch 1, and capping the size
/// keeps what stays allocated small.
constexpr int64_t kReusedOutputBytes = 256 * 1024;

}  // namespace

struct ConvCache::Impl {
    struct Entry {
        std::vector<int64_t> input;     ///< input sizes the primitive was built for
        std::vector<int64_t> weight;    ///< weight sizes it was built for
        Op activation = Op::kIdentity;  ///< kReLU, kClip or kIdentity (none)
        float lo = 0.f, hi = 0.f;       ///< Clip's range
        bool sum = false;
        bool has_bias = false;
        std::vector<int64_t> output;
        dnnl::convolution_forward primitive;
        memory src, dst;           ///< bound to each call's tensors with set_data_handle
        memory weights;            ///< packed
        at::Tensor output_buffer;  ///< the last output, reused when no one else holds it
        at::Tensor bias;           ///< contiguous copy (kept alive for the memory object)
        memory bias_mem;
        std::unordered_map<int, memory> args;  ///< built once: the memory objects are handles
        const void* weight_ptr = nullptr;
        int64_t weight_version = -1;
        const void* bias_ptr = nullptr;
        int64_t bias_version = -1;
    };
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    std::vector<Entry> entries;  ///< by node id

    void build(Entry& e, const Node& n, const at::Tensor& x, const Node* act, bool sum) {
        const Attrs& a = n.attrs;
        const at::Tensor& w = n.params.at("weight");
        const int64_t g = a.groups;
        std::vector<int64_t> out = {x.size(0), w.size(0)};
        for (int d = 0; d < 2; ++d) {
            const int64_t k = (w.size(2 + d) - 1) * a.dilation[d] + 1;
            out.push_back((x.size(2 + d) + 2 * a.padding[d] - k) / a.stride[d] + 1);
        }
        e.input = x.sizes().vec();
        e.weight = w.sizes().vec();
        e.output = out;
        e.activation = act == nullptr ? Op::kIdentity : act->op;
        e.lo = act == nullptr ? 0.f : static_cast<float>(act->attrs.min);
        e.hi = act == nullptr ? 0.f : static_cast<float>(act->attrs.max);
        e.sum = sum;
        e.has_bias = n.params.count("bias") != 0;
        // With exactly one SIMD block of channels in and out, channels-last is the same bytes as
        // oneDNN's blocked layout (nChw16c on AVX-512, nChw8c on AVX2), whose direct kernels are
        // faster on such narrow layers (16 channels: 8.2 vs 9.2 µs at 28x28, 1.3 vs 1.8 µs at
        // 7x7, batch 1, docs/performance.md) and need no reorder.
        const int64_t block = simd_block();
        const bool one_block = block > 0 && g == 1 && w.size(0) == block && w.size(1) == block;
        const auto tag = !one_block    ? memory::format_tag::nhwc
                         : block == 16 ? memory::format_tag::nChw16c
                                       : memory::format_tag::nChw8c;
        const memory::desc src_md(dims_of(x.sizes()), memory::data_type::f32, tag);
        const memory::desc dst_md(dims_of(out), memory::data_type::f32, tag);
        memory::dims wdims = g == 1
                                 ? dims_of(w.sizes())
                                 : memory::dims{g, w.size(0) / g, w.size(1), w.size(2), w.size(3)};
        memory::desc w_any(wdims, memory::data_type::f32, memory::format_tag::any);
        memory::desc b_md({w.size(0)}, memory::data_type::f32, memory::format_tag::a);
        memory::dims stride = {a.stride[0], a.stride[1]};
        memory::dims dilation = {a.dilation[0] - 1, a.dilation[1] - 1};
        memory::dims pad = {a.padding[0], a.padding[1]};
        const bool has_bias = n.params.count("bias") != 0;
        dnnl::primitive_attr attr;
        dnnl::post_ops ops;
        if (sum) {
            ops.append_sum(1.f);  // dst = conv(x) + dst: a residual Add done by the primitive
        }
        if (e.activation == Op::kReLU) {
            ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
        } else if (e.activation == Op::kClip) {  // min(max(x, lo), hi), as at::clamp
            ops.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, e.lo, e.hi);
        }
        attr.set_post_ops(ops);
        auto desc =
            has_bias ? dnnl::convolution_forward::desc(
                           dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                           src_md, w_any, b_md, dst_md, stride, dilation, pad, pad)
                     : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                                       dnnl::algorithm::convolution_direct, src_md,
                                                       w_any, dst_md, stride, dilation, pad, pad);
        dnnl::convolution_forward::primitive_desc pd(desc, attr, engine);
        e.primitive = dnnl::convolution_forward(pd);
        e.weights = memory(pd.weights_desc(), engine);
        e.src = memory(src_md, engine, DNNL_MEMORY_NONE);
        e.dst = memory(dst_md, engine, DNNL_MEMORY_NONE);
        e.args = {{DNNL_ARG_SRC, e.src}, {DNNL_ARG_WEIGHTS, e.weights}, {DNNL_ARG_DST, e.dst}};
        e.weight_ptr = nullptr;  // packed on first use
        e.bias_ptr = nullptr;
    }

    void pack(Entry& e, const Node& n) {
        const at::Tensor& w = n.params.at("weight");
        if (e.weight_ptr != w.data_ptr() || e.weight_version != w._version()) {
            at::Tensor plain = w.detach().contiguous();  // OIHW
            const int64_t g = n.attrs.groups;
            memory::dims wdims =
                g == 1 ? dims_of(w.sizes())
                       : memory::dims{g, w.size(0) / g, w.size(1), w.size(2), w.size(3)};
            memory user({wdims, memory::data_type::f32,
                         g == 1 ? memory::format_tag::oihw : memory::format_tag::goihw},
                        engine, plain.data_ptr());
            dnnl::reorder(user, e.weights).execute(stream, user, e.weights);
            stream.wait();
            e.weight_ptr = w.data_ptr();
            e.weight_version = w._version();
        }
        auto it = n.params.find("bias");
        if (it != n.params.end() &&
            (e.bias_ptr != it->second.data_ptr() || e.bias_version != it->second._version())) {
            e.bias = it->second.detach().contiguous().clone();
            e.bias_mem = memory({{e.bias.size(0)}, memory::data_type::f32, memory::format_tag::a},
                                engine, e.bias.data_ptr());
            e.bias_ptr = it->second.data_ptr();
            e.bias_version = it->second._version();
            e.args[DNNL_ARG_BIAS] = e.bias_mem;
        }
    }
};

ConvCache::ConvCache() : impl_(available() ? std::make_unique<Impl>() : nullptr) {}
ConvCache::~ConvCache() = default;

bool ConvCache::available() {
    static const bool on = [] {
        const char* env = std::getenv("POCKETFLOW_ONEDNN");
        return env == nullptr || std::strcmp(env, "0") != 0;
    }();
    return on;
}

void ConvCache::invalidate() {
    if (impl_ == nullptr) {
        return;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& e : impl_->entries) {
        e.weight_ptr = nullptr;
        e.bias_ptr = nullptr;
    }
}

bool ConvCache::fusable_activation(const Node& node) {
    // (ATen's clamp of a float tensor compares in float too: the same values.)
    return node.op == Op::kReLU ||
           (node.op == Op::kClip && std::isfinite(node.attrs.min) &&
            std::isfinite(node.attrs.max) && node.attrs.min <= node.attrs.max);
}

bool ConvCache::supports(const Node& node, const at::Tensor& input) {
    return node.op == Op::kConv2d && input.dim() == 4 && input.is_cpu() &&
           input.scalar_type() == at::kFloat && !input.requires_grad() &&
           node.params.at("weight").scalar_type() == at::kFloat;
}

at::Tensor ConvCache::run(
    int id, const Node& node, const at::Tensor& input, const Node* act, at::Tensor* sum_into) {
    PF_CHECK(impl_ != nullptr, Error, "oneDNN convolutions are not available in this build");
    at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast);
    if (impl_->entries.size() <= static_cast<size_t>(id)) {
        impl_->entries.resize(static_cast<size_t>(id) + 1);
    }
    Impl::Entry& e = impl_->entries[static_cast<size_t>(id)];
    const bool sum = sum_into != nullptr;
    const Op kind = act == nullptr ? Op::kIdentity : act->op;
    const bool same_act =
        e.activation == kind && (kind != Op::kClip || (e.lo == static_cast<float>(act->attrs.min) &&
                                                       e.hi == static_cast<float>(act->attrs.max)));
    if (!same(e.input, x.sizes()) || !same_act || e.sum != sum ||
        e.has_bias != (node.params.count("bias") != 0) ||
        !same(e.weight, node.params.at("weight").sizes())) {
        impl_->build(e, node, x, act, sum);
    }
    impl_->pack(e, node);
    at::Tensor y;
    if (sum) {
        PF_CHECK(same(e.output, sum_into->sizes()) &&
                     sum_into->is_contiguous(at::MemoryFormat::ChannelsLast),
                 Error, "node {}: the residual to add into has the wrong shape or layout",
                 node.name);
        y = *sum_into;
    } else {
        at::Tensor& kept = e.output_buffer;
        // Reused only when no one else holds it (the tensor or its storage) and nothing about it
        // changed since: shape, layout, no autograd flag, the same inference-mode kind.
        if (kept.defined() && kept.use_count() == 1 && kept.storage().use_count() == 1 &&
            same(e.output, kept.sizes()) && kept.is_contiguous(at::MemoryFormat::ChannelsLast) &&
            !kept.requires_grad() && kept.is_inference() == c10::InferenceMode::is_enabled()) {
            y = kept;  // the previous call's output, released by everyone else
        } else {
            y = at::empty(e.output, x.options().memory_format(at::MemoryFormat::ChannelsLast));
            const int64_t bytes = y.numel() * static_cast<int64_t>(sizeof(float));
            kept = bytes <= kReusedOutputBytes ? y : at::Tensor();
        }
    }
    e.src.set_data_handle(x.data_ptr());
    e.dst.set_data_handle(y.data_ptr());
    e.primitive.execute(impl_->stream, e.args);
    impl_->stream.wait();
    return y;
}

#else  // no oneDNN in this build: Model keeps LibTorch's path

struct ConvCache::Impl {};
ConvCache::ConvCache() = default;
ConvCache::~ConvCache() = default;
bool ConvCache::available() {
    return false;
}
void ConvCache::invalidate() {}

bool ConvCache::supports(const Node&, const at::Tensor&) {
    return false;
}
bool ConvCache::fusable_activation(const Node&) {
    return false;
}
at::Tensor ConvCache::run(int, const Node& node, const at::Tensor&, const Node*, at::Tensor*) {
    throw Error(
        fmt::format("node {}: oneDNN convolutions are not available in this build", node.name));
}

#endif

}  // namespace pocketflow
