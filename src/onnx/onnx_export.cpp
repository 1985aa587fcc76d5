// SPDX-License-Identifier: Apache-2.0
// ONNX export (graph IR → ONNX; quantized graphs as QDQ int8 models), with Debian's libonnx.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/onnx.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

// ------------------------------------------------------------------------------------------------
// Export

class Exporter {
public:
    Exporter(const Graph& graph, const ModelMeta& meta, const OnnxExportOptions& options)
        : graph_(options.fold_batch_norm ? fold_batch_norm(graph) : graph),
          meta_(meta),
          options_(options) {}

    onnx::ModelProto run() {
        PF_CHECK(options_.opset >= 11 && options_.opset <= 17, ConfigError,
                 "failed to export with opset {}: supported opsets are 11–17", options_.opset);
        onnx::ModelProto model;
        model.set_ir_version(options_.opset >= 15 ? 8 : 7);
        model.set_producer_name("pocketflow");
        model.set_producer_version(POCKETFLOW_VERSION);
        auto* opset = model.add_opset_import();
        opset->set_domain("");
        opset->set_version(options_.opset);
        add_meta(model, "pocketflow.arch", meta_.arch);
        add_meta(model, "pocketflow.mean", fmt::format("{}", fmt::join(meta_.mean, ",")));
        add_meta(model, "pocketflow.std", fmt::format("{}", fmt::join(meta_.std, ",")));
        g_ = model.mutable_graph();
        g_->set_name(meta_.arch.empty() ? "pocketflow" : meta_.arch);
        const auto& nodes = graph_.nodes();
        auto shapes = graph_.infer_shapes();
        names_.assign(nodes.size(), "");
        act_source_ = quantized_values(graph_);
        PF_CHECK(!is_quantized(graph_) || options_.opset >= 13, ConfigError,
                 "failed to export a quantized model with opset {}: per-channel "
                 "DequantizeLinear needs opset 13 or later",
                 options_.opset);
        names_[0] = "input";
        add_value_info(g_->add_input(), "input", graph_.input_shape());
        quantize_value(0, "input", "input_dq");
        for (size_t i = 1; i < nodes.size(); ++i) {
            const Node& n = nodes[i];
            const std::string name = static_cast<int>(i) == graph_.output() ? "logits" : n.name;
            if (act_source_[i] < 0) {
                names_[i] = name;
                export_node(n, name);
            } else {
                // A quantized value: the op's float output, QuantizeLinear, DequantizeLinear
                // (the pattern ONNX Runtime fuses into its int8 kernels).
                const std::string raw = n.name + "_f";
                names_[i] = raw;
                export_node(n, raw);
                quantize_value(i, raw, name == "logits" ? name : n.name + "_dq");
            }
        }
        add_value_info(g_->add_output(), "logits", shapes[static_cast<size_t>(graph_.output())]);
        return model;
    }

private:
    static void add_meta(onnx::ModelProto& m, const std::string& key, const std::string& value) {
        auto* p = m.add_metadata_props();
        p->set_key(key);
        p->set_value(value);
    }

    void add_value_info(onnx::ValueInfoProto* v,
                        const std::string& name,
                        const std::vector<int64_t>& shape) {
        v->set_name(name);
        auto* t = v->mutable_type()->mutable_tensor_type();
        t->set_elem_type(onnx::TensorProto::FLOAT);
        auto* s = t->mutable_shape();
        auto* batch = s->add_dim();
        if (options_.dynamic_batch) {
            batch->set_dim_param("batch");
        } else {
            batch->set_dim_value(1);
        }
        for (int64_t d : shape) {
            s->add_dim()->set_dim_value(d);
        }
    }

    std::string initializer(const std::string& name, const at::Tensor& t) {
        at::Tensor c = t.detach().to(at::kFloat).contiguous();
        auto* init = g_->add_initializer();
        init->set_name(name);
        init->set_data_type(onnx::TensorProto::FLOAT);
        for (int64_t d : c.sizes()) {
            init->add_dims(d);
        }
        init->set_raw_data(std::string(static_cast<const char*>(c.data_ptr()),
                                       static_cast<size_t>(c.numel()) * 4));
        return name;
    }

    std::string int_initializer(const std::string& name, const std::vector<int64_t>& v) {
        auto* init = g_->add_initializer();
        init->set_name(name);
        init->set_data_type(onnx::TensorProto::INT64);
        init->add_dims(static_cast<int64_t>(v.size()));
        for (int64_t x : v) {
            init->add_int64_data(x);
        }
        return name;
    }

    onnx::NodeProto* node(const std::string& op,
                          const std::string& name,
                          const std::vector<std::string>& inputs,
                          const std::string& output) {
        auto* n = g_->add_node();
        n->set_op_type(op);
        n->set_name(name);
        for (const auto& in : inputs) {
            n->add_input(in);
        }
        n->add_output(output);
        return n;
    }

    static void set_ints(onnx::NodeProto* n,
                         const std::string& name,
                         const std::vector<int64_t>& v) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INTS);
        for (int64_t x : v) {
            a->add_ints(x);
        }
    }
    static void set_int(onnx::NodeProto* n, const std::string& name, int64_t v) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(v);
    }
    static void set_float(onnx::NodeProto* n, const std::string& name, double v) {
        auto* a = n->add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::FLOAT);
        a->set_f(static_cast<float>(v));
    }

    /// A tensor initializer of any type from raw little-endian bytes.
    std::string raw_initializer(const std::string& name,
                                int type,
                                const std::vector<int64_t>& dims,
                                std::string bytes) {
        auto* init = g_->add_initializer();
        init->set_name(name);
        init->set_data_type(type);
        for (int64_t d : dims) {
            init->add_dims(d);
        }
        init->set_raw_data(std::move(bytes));
        return name;
    }

    /// Q → DQ after value `i` (named `raw`), with the scale and zero point of its quantization
    /// source; the DQ output `out` is what readers see.
    void quantize_value(size_t i, const std::string& raw, const std::string& out) {
        const int src = act_source_[i];
        if (src < 0) {
            return;
        }
        const Node& s = graph_.nodes()[static_cast<size_t>(src)];
        const ActParams p = act_params(s);
        const bool narrow = s.quant.act_bits < 8;
        const std::string scale = s.name + ".act_scale", zero = s.name + ".act_zero_point";
        const std::string levels_max = s.name + ".act_qmax";
        if (act_params_written_.insert(src).second) {
            raw_initializer(scale, onnx::TensorProto::FLOAT, {},
                            std::string(reinterpret_cast<const char*>(&p.scale), 4));
            raw_initializer(zero, onnx::TensorProto::UINT8, {},
                            std::string(1, static_cast<char>(p.zero_point)));
            if (narrow) {
                raw_initializer(levels_max, onnx::TensorProto::UINT8, {},
                                std::string(1, static_cast<char>(p.qmax)));
            }
        }
        const std::string base = i == 0 ? "input" : graph_.nodes()[i].name;
        node("QuantizeLinear", base + "_quantize", {raw, scale, zero}, base + "_q");
        std::string q = base + "_q";
        if (narrow) {
            // ONNX has no narrower type: the uint8 integers are clipped to the 2^b levels the
            // simulation uses (Clip on uint8, opset 12+; the layers' int8 kernels stay fused).
            if (zero_u8_.empty()) {
                zero_u8_ = raw_initializer("pocketflow.uint8_zero", onnx::TensorProto::UINT8, {},
                                           std::string(1, '\0'));
            }
            node("Clip", base + "_levels", {q, zero_u8_, levels_max}, base + "_q_levels");
            q = base + "_q_levels";
        }
        node("DequantizeLinear", base + "_dequantize", {q, scale, zero}, out);
        names_[i] = out;
    }

    /// A codebook layer's weight computed in the model: Gather(codebook, Cast(uint8 indices)).
    std::string codebook_weight(const Node& n) {
        at::Tensor codebook = n.params.at("codebook").detach().to(at::kFloat).contiguous();
        at::Tensor index = n.buffers.at("weight_index").contiguous();
        const int64_t k = codebook.numel();
        if (has_mask(n)) {
            if (k >= 256) {
                return initializer(n.name + ".weight", n.params.at("weight"));
            }
            codebook = at::cat({codebook, at::zeros({1})});  // index k: a pruned weight
            index = index.masked_fill(n.buffers.at("weight_mask").logical_not(), k).contiguous();
        }
        const std::string book = initializer(n.name + ".codebook", codebook);
        const std::string idx =
            raw_initializer(n.name + ".weight_index", onnx::TensorProto::UINT8, index.sizes().vec(),
                            std::string(static_cast<const char*>(index.data_ptr()),
                                        static_cast<size_t>(index.numel())));
        auto* cast = node("Cast", n.name + "_index_cast", {idx}, n.name + ".weight_index_i32");
        set_int(cast, "to", onnx::TensorProto::INT32);
        node("Gather", n.name + "_decode", {book, n.name + ".weight_index_i32"},
             n.name + ".weight");
        return n.name + ".weight";
    }

    /// The weight (and bias) inputs of a conv/linear: float initializers, or for a quantized
    /// layer int8 weights and int32 biases behind DequantizeLinear.
    std::vector<std::string> layer_inputs(const Node& n) {
        std::vector<std::string> inputs = {in(n, 0)};
        if (n.quant.weight_bits == 0) {
            inputs.push_back(options_.codebook_weights && has_codebook(n)
                                 ? codebook_weight(n)
                                 : initializer(n.name + ".weight", n.params.at("weight")));
            if (n.params.count("bias")) {
                inputs.push_back(initializer(n.name + ".bias", n.params.at("bias")));
            }
            return inputs;
        }
        const at::Tensor& w = n.params.at("weight");
        const at::Tensor& ws = n.buffers.at("weight_scale");
        const bool per_channel = ws.numel() > 1;
        const std::vector<int64_t> sdims =
            per_channel ? std::vector<int64_t>{ws.numel()} : std::vector<int64_t>{};
        at::Tensor q = weight_ints(n).to(at::kChar).contiguous();
        raw_initializer(
            n.name + ".weight_q", onnx::TensorProto::INT8, w.sizes().vec(),
            std::string(static_cast<const char*>(q.data_ptr()), static_cast<size_t>(q.numel())));
        at::Tensor wsc = ws.contiguous();
        raw_initializer(n.name + ".weight_scale", onnx::TensorProto::FLOAT, sdims,
                        std::string(static_cast<const char*>(wsc.data_ptr()),
                                    static_cast<size_t>(ws.numel()) * 4));
        raw_initializer(n.name + ".weight_zero_point", onnx::TensorProto::INT8, sdims,
                        std::string(static_cast<size_t>(ws.numel()), '\0'));
        auto* dq =
            node("DequantizeLinear", n.name + "_weight_dequantize",
                 {n.name + ".weight_q", n.name + ".weight_scale", n.name + ".weight_zero_point"},
                 n.name + ".weight_dq");
        if (per_channel) {
            set_int(dq, "axis", 0);
        }
        inputs.push_back(n.name + ".weight_dq");
        const int src = act_source_[static_cast<size_t>(n.inputs[0])];
        if (src < 0) {
            inputs.push_back(initializer(n.name + ".bias", n.params.at("bias")));
            return inputs;
        }
        // int32 bias with scale input_scale × weight_scale: the form ONNX Runtime fuses.
        auto [bq, bs] = bias_ints(n, act_params(graph_.nodes()[static_cast<size_t>(src)]).scale);
        const int64_t c = bq.numel();
        bq = bq.contiguous();
        bs = bs.contiguous();
        raw_initializer(
            n.name + ".bias_q", onnx::TensorProto::INT32, {c},
            std::string(static_cast<const char*>(bq.data_ptr()), static_cast<size_t>(c) * 4));
        raw_initializer(
            n.name + ".bias_scale", onnx::TensorProto::FLOAT, {c},
            std::string(static_cast<const char*>(bs.data_ptr()), static_cast<size_t>(c) * 4));
        raw_initializer(n.name + ".bias_zero_point", onnx::TensorProto::INT32, {c},
                        std::string(static_cast<size_t>(c) * 4, '\0'));
        set_int(node("DequantizeLinear", n.name + "_bias_dequantize",
                     {n.name + ".bias_q", n.name + ".bias_scale", n.name + ".bias_zero_point"},
                     n.name + ".bias_dq"),
                "axis", 0);
        inputs.push_back(n.name + ".bias_dq");
        return inputs;
    }

    std::string in(const Node& n, size_t k) const {
        return names_[static_cast<size_t>(n.inputs[k])];
    }

    void export_conv(const Node& n, const std::string& out) {
        auto* c = node("Conv", n.name, layer_inputs(n), out);
        set_ints(c, "kernel_shape", n.attrs.kernel);
        set_ints(c, "strides", n.attrs.stride);
        set_ints(c, "pads",
                 {n.attrs.padding[0], n.attrs.padding[1], n.attrs.padding[0], n.attrs.padding[1]});
        set_ints(c, "dilations", n.attrs.dilation);
        set_int(c, "group", n.attrs.groups);
    }

    void export_node(const Node& n, const std::string& out) {
        const Attrs& a = n.attrs;
        switch (n.op) {
            case Op::kInput:
                return;
            case Op::kConv2d:
                export_conv(n, out);
                return;
            case Op::kBatchNorm2d: {
                auto* b = node("BatchNormalization", n.name,
                               {in(n, 0), initializer(n.name + ".weight", n.params.at("weight")),
                                initializer(n.name + ".bias", n.params.at("bias")),
                                initializer(n.name + ".running_mean", n.buffers.at("running_mean")),
                                initializer(n.name + ".running_var", n.buffers.at("running_var"))},
                               out);
                set_float(b, "epsilon", a.eps);
                return;
            }
            case Op::kReLU:
                node("Relu", n.name, {in(n, 0)}, out);
                return;
            case Op::kClip: {
                std::vector<std::string> inputs = {in(n, 0)};
                inputs.push_back(
                    std::isfinite(a.min)
                        ? initializer(n.name + ".min", at::tensor(static_cast<float>(a.min)))
                        : "");
                if (std::isfinite(a.max)) {
                    inputs.push_back(
                        initializer(n.name + ".max", at::tensor(static_cast<float>(a.max))));
                }
                node("Clip", n.name, inputs, out);
                return;
            }
            case Op::kSigmoid:
                node("Sigmoid", n.name, {in(n, 0)}, out);
                return;
            case Op::kHardSigmoid: {
                auto* h = node("HardSigmoid", n.name, {in(n, 0)}, out);
                set_float(h, "alpha", a.alpha);
                set_float(h, "beta", a.beta);
                return;
            }
            case Op::kHardSwish:
                if (options_.opset >= 14) {
                    node("HardSwish", n.name, {in(n, 0)}, out);
                } else {
                    auto* h =
                        node("HardSigmoid", n.name + "_hardsigmoid", {in(n, 0)}, n.name + "_hs");
                    set_float(h, "alpha", 1.0 / 6.0);
                    set_float(h, "beta", 0.5);
                    node("Mul", n.name, {in(n, 0), n.name + "_hs"}, out);
                }
                return;
            case Op::kAdd:
            case Op::kMul:
                node(n.op == Op::kAdd ? "Add" : "Mul", n.name, {in(n, 0), in(n, 1)}, out);
                return;
            case Op::kConcat: {
                std::vector<std::string> inputs;
                for (size_t k = 0; k < n.inputs.size(); ++k) {
                    inputs.push_back(in(n, k));
                }
                set_int(node("Concat", n.name, inputs, out), "axis", a.axis);
                return;
            }
            case Op::kMaxPool:
            case Op::kAvgPool: {
                auto* p =
                    node(n.op == Op::kMaxPool ? "MaxPool" : "AveragePool", n.name, {in(n, 0)}, out);
                set_ints(p, "kernel_shape", a.kernel);
                set_ints(p, "strides", a.stride);
                set_ints(p, "pads", {a.padding[0], a.padding[1], a.padding[0], a.padding[1]});
                set_int(p, "ceil_mode", a.ceil_mode ? 1 : 0);
                if (n.op == Op::kMaxPool) {
                    if (a.dilation != std::vector<int64_t>{1, 1}) {
                        set_ints(p, "dilations", a.dilation);
                    }
                } else {
                    set_int(p, "count_include_pad", a.count_include_pad ? 1 : 0);
                }
                return;
            }
            case Op::kGlobalAvgPool:
                node("GlobalAveragePool", n.name, {in(n, 0)}, out);
                return;
            case Op::kFlatten:
                set_int(node("Flatten", n.name, {in(n, 0)}, out), "axis", a.axis);
                return;
            case Op::kReshape: {
                std::vector<int64_t> shape = {0};
                shape.insert(shape.end(), a.shape.begin(), a.shape.end());
                node("Reshape", n.name, {in(n, 0), int_initializer(n.name + ".shape", shape)}, out);
                return;
            }
            case Op::kLinear: {
                set_int(node("Gemm", n.name, layer_inputs(n), out), "transB", 1);
                return;
            }
            case Op::kDropout:
            case Op::kIdentity:
                node("Identity", n.name, {in(n, 0)}, out);
                return;
        }
        throw Error(fmt::format("failed to export node {}: op {} has no ONNX mapping", n.name,
                                op_name(n.op)));
    }

    const Graph graph_;  // BN folded when asked
    const ModelMeta& meta_;
    OnnxExportOptions options_;
    onnx::GraphProto* g_ = nullptr;
    std::vector<std::string> names_;
    std::vector<int> act_source_;       // quantized_values(graph_)
    std::set<int> act_params_written_;  // nodes whose scale/zero-point initializers exist
    std::string zero_u8_;  // a uint8 0 initializer (the Clips' lower bound), when one is needed
};

}  // namespace

void export_onnx(const std::string& path,
                 const Graph& graph,
                 const ModelMeta& meta,
                 const OnnxExportOptions& options) {
    graph.validate();
    graph.num_classes();
    onnx::ModelProto model = Exporter(graph, meta, options).run();
    try {
        onnx::checker::check_model(model);
        onnx::shape_inference::InferShapes(model);
    } catch (const std::exception& e) {
        throw Error(fmt::format("failed to export {}: the ONNX checker rejected the model: {}",
                                path, e.what()));
    }
    std::string bytes;
    PF_CHECK(model.SerializeToString(&bytes), IoError, "failed to serialise {}", path);
    write_file_atomic(path, bytes);
}

}  // namespace pocketflow
