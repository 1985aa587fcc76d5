// SPDX-License-Identifier: Apache-2.0
// ONNX import (ONNX protobufs → graph IR), with Debian's libonnx: the op mapping and folding.
// Tensors and metadata decoded: onnx_values.cpp. Export: onnx_export.cpp.
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <unistd.h>

#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/util.h"

#include "onnx_values.h"

namespace pocketflow {

namespace {

class Importer {
public:
    Importer(std::string path, const OnnxImportOptions& options)
        : path_(std::move(path)), options_(options) {}

    ModelFile run() {
        std::string bytes = read_file(path_);
        onnx::ModelProto model;
        if (bytes.empty() || !model.ParseFromString(bytes)) {
            fail_file("not a valid ONNX protobuf (truncated or corrupted?)");
        }
        const onnx::GraphProto& g = model.graph();
        opset_ = 0;
        for (const auto& op : model.opset_import()) {
            if (op.domain().empty() || op.domain() == "ai.onnx") {
                opset_ = op.version();
            }
        }
        if (opset_ < 9 || opset_ > 18) {
            fail_file(fmt::format("opset {} is not supported (9–18)", opset_));
        }
        for (const auto& t : g.initializer()) {
            constants_[t.name()] = to_constant(t, "initializer " + t.name(), path_);
        }
        // The one real input (graph inputs may also list initializers).
        std::string input_name;
        std::vector<int64_t> shape;
        for (const auto& in : g.input()) {
            if (constants_.count(in.name())) {
                continue;
            }
            if (!input_name.empty()) {
                fail_file(
                    fmt::format("has several inputs ('{}', '{}'); one image input is supported",
                                input_name, in.name()));
            }
            input_name = in.name();
            const auto& dims = in.type().tensor_type().shape().dim();
            if (dims.size() != 4) {
                fail_file(fmt::format("input '{}' has rank {}; expected [N, C, H, W]", in.name(),
                                      dims.size()));
            }
            if (dims[0].has_dim_value()) {
                fixed_batch_ = dims[0].dim_value();
            }
            for (int d = 1; d < 4; ++d) {
                shape.push_back(dims[d].has_dim_value() ? dims[d].dim_value() : -1);
            }
        }
        if (input_name.empty()) {
            fail_file("has no input");
        }
        if (!options_.input_shape.empty()) {
            if (options_.input_shape.size() != 3) {
                fail_file("input shape override must be [C, H, W]");
            }
            for (int d = 0; d < 3; ++d) {
                if (shape[d] > 0 && shape[d] != options_.input_shape[d]) {
                    fail_file(fmt::format("input is [{}] but [{}] was asked for",
                                          fmt::join(shape, ", "),
                                          fmt::join(options_.input_shape, ", ")));
                }
            }
            shape = options_.input_shape;
        }
        for (int64_t d : shape) {
            if (d <= 0) {
                fail_file(
                    fmt::format("input '{}' has symbolic sizes [{}]; give model.input: [C, H, W]",
                                input_name, fmt::join(shape, ", ")));
            }
            if (d > (int64_t{1} << 16)) {  // (and MACs stay far from int64 overflow)
                fail_file(
                    fmt::format("input '{}' declares [{}]: a side or channel count over "
                                "65536 is not an image",
                                input_name, fmt::join(shape, ", ")));
            }
        }
        graph_ = Graph(shape);
        values_[input_name] = 0;
        for (int i = 0; i < g.node_size(); ++i) {
            import_node(g.node(i), i);
        }
        if (g.output_size() != 1) {
            fail_file(fmt::format("has {} outputs; one (the class scores) is supported",
                                  g.output_size()));
        }
        auto out = values_.find(g.output(0).name());
        if (out == values_.end()) {
            fail_file(
                fmt::format("output '{}' is not computed from the input", g.output(0).name()));
        }
        graph_.set_output(out->second);
        prune_unused();
        graph_.validate();
        ModelFile file;
        file.meta.arch = "onnx";
        for (const auto& p : model.metadata_props()) {
            if (p.key() == "pocketflow.arch") {
                file.meta.arch = p.value();
            } else if (p.key() == "pocketflow.mean") {
                file.meta.mean = parse_doubles(p.key(), p.value(), path_);
            } else if (p.key() == "pocketflow.std") {
                file.meta.std = parse_doubles(p.key(), p.value(), path_);
            }
        }
        if (const std::string why = normalisation_problem(file.meta, graph_.input_shape()[0]);
            !why.empty()) {
            fail_file("metadata pocketflow.mean/std: " + why);
        }
        file.graph = std::move(graph_);
        return file;
    }

private:
    [[noreturn]] void fail_file(const std::string& why) const {
        throw InputError(fmt::format("failed to import {}: {}", path_, why));
    }
    [[noreturn]] void fail(const onnx::NodeProto& n, const std::string& why) const {
        fail_node(path_, n, why);
    }

    /// Rejects attributes the mapping does not know, so nothing is silently approximated.
    void check_attrs(const onnx::NodeProto& n, const std::set<std::string>& known) const {
        for (const auto& a : n.attribute()) {
            if (!known.count(a.name())) {
                fail(n, fmt::format("attribute '{}' is not supported", a.name()));
            }
        }
    }

    int value(const onnx::NodeProto& n, int k) const {
        if (k >= n.input_size() || n.input(k).empty()) {
            fail(n, fmt::format("missing input {}", k));
        }
        if (pending_pads_.count(n.input(k)) &&
            !(k == 0 && (n.op_type() == "Conv" || n.op_type() == "AveragePool"))) {
            fail(n,
                 "reads a zero-padded tensor (Pad); Pad is supported only right before Conv or "
                 "AveragePool");
        }
        auto it = values_.find(n.input(k));
        if (it == values_.end()) {
            fail(n, fmt::format(
                        "input '{}' is a constant or unknown where a computed tensor is expected",
                        n.input(k)));
        }
        return it->second;
    }
    const Constant* constant(const onnx::NodeProto& n, int k) const {
        if (k >= n.input_size() || n.input(k).empty()) {
            return nullptr;
        }
        auto it = constants_.find(n.input(k));
        return it == constants_.end() ? nullptr : &it->second;
    }
    const Constant& require_constant(const onnx::NodeProto& n, int k, const char* what) const {
        const Constant* c = constant(n, k);
        if (c == nullptr) {
            fail(n, fmt::format("{} (input {}) must be a constant initializer", what, k));
        }
        return *c;
    }
    /// Whether every input is a known constant (the folding below reads each one by name).
    bool all_constant(const onnx::NodeProto& n) const {
        for (int k = 0; k < n.input_size(); ++k) {
            if (n.input(k).empty() || !constants_.count(n.input(k))) {
                return false;
            }
        }
        return n.input_size() > 0;
    }

    std::string unique_name(const onnx::NodeProto& n, int index) {
        std::string base = n.name().empty() ? fmt::format("{}_{}", n.op_type(), index) : n.name();
        std::string name;
        for (char c : base) {
            name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
        }
        size_t first = name.find_first_not_of('_');
        name = first == std::string::npos ? fmt::format("node_{}", index) : name.substr(first);
        std::string out = name;
        for (int k = 2; graph_.find(out) >= 0; ++k) {
            out = fmt::format("{}_{}", name, k);
        }
        return out;
    }

    int add(Node node, const onnx::NodeProto& n, int index) {
        node.name = unique_name(n, index);
        int id = graph_.add(std::move(node));
        values_[n.output(0)] = id;
        return id;
    }

    std::vector<int64_t> shape_of(int id) { return graph_.infer_shapes()[static_cast<size_t>(id)]; }

    /// Symmetric pads from ONNX pads / auto_pad for a 2-D window.
    std::vector<int64_t> pads2d(const onnx::NodeProto& n,
                                int input,
                                const std::vector<int64_t>& kernel,
                                const std::vector<int64_t>& stride,
                                const std::vector<int64_t>& dilation) {
        std::string auto_pad = attr_string(n, "auto_pad", "NOTSET");
        if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
            auto in = shape_of(input);
            std::vector<int64_t> pads;
            for (int d = 0; d < 2; ++d) {
                int64_t size = in[static_cast<size_t>(d + 1)];
                int64_t out = (size + stride[d] - 1) / stride[d];
                int64_t total = std::max<int64_t>(
                    0, (out - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1 - size);
                if (total % 2 != 0) {
                    fail(n, "auto_pad " + auto_pad +
                                " needs asymmetric padding here, which is not supported");
                }
                pads.push_back(total / 2);
            }
            return pads;
        }
        if (auto_pad == "VALID") {
            return {0, 0};
        }
        if (auto_pad != "NOTSET" && !auto_pad.empty()) {
            fail(n, "auto_pad " + auto_pad + " is not supported");
        }
        auto p = attr_ints(n, "pads", {0, 0, 0, 0});
        if (p.size() != 4 || p[0] != p[2] || p[1] != p[3]) {
            fail(n, fmt::format("pads [{}] are asymmetric; only symmetric padding is supported",
                                fmt::join(p, ", ")));
        }
        return {p[0], p[1]};
    }

    std::vector<int64_t> pair_attr(const onnx::NodeProto& n, const std::string& name, int64_t def) {
        auto v = attr_ints(n, name, {def, def});
        if (v.size() != 2) {
            fail(n, fmt::format("attribute '{}' must have 2 values (2-D only)", name));
        }
        return v;
    }

    void import_node(const onnx::NodeProto& n, int index) {
        const std::string& op = n.op_type();
        if (!n.domain().empty() && n.domain() != "ai.onnx") {
            fail(n, "custom domain '" + n.domain() + "' is not supported");
        }
        if (n.output_size() < 1) {
            fail(n, "has no output");
        }
        // Inputs the handlers below read by position: a node with fewer is malformed (protobuf
        // does not check the index).
        static const std::map<std::string, int> kMinInputs = {{"Constant", 0},
                                                              {"Gather", 2},
                                                              {"Conv", 2},
                                                              {"Gemm", 2},
                                                              {"MatMul", 2},
                                                              {"Add", 2},
                                                              {"Sub", 2},
                                                              {"Mul", 2},
                                                              {"Div", 2},
                                                              {"Reshape", 2},
                                                              {"BatchNormalization", 5},
                                                              {"Clip", 1},
                                                              {"Pad", 1}};
        const auto min_inputs = kMinInputs.find(op);
        const int needed = min_inputs == kMinInputs.end() ? 1 : min_inputs->second;
        if (n.input_size() < needed) {
            fail(n, fmt::format("has {} inputs; {} needs at least {}", n.input_size(), op, needed));
        }
        // ---- constant folding (shapes, axes) ----
        if (op == "Constant") {
            check_attrs(n, {"value", "value_int", "value_ints", "value_float", "value_floats"});
            Constant c;
            if (const auto* a = attr(n, "value")) {
                c = to_constant(a->t(), "constant " + n.output(0), path_);
            } else if (const auto* vi = attr(n, "value_int")) {
                c.is_int = true;
                c.ints = {vi->i()};
                c.tensor = at::tensor(c.ints, at::kLong).to(at::kFloat).reshape({});
            } else if (const auto* vis = attr(n, "value_ints")) {
                c.is_int = true;
                c.ints.assign(vis->ints().begin(), vis->ints().end());
                c.tensor = at::tensor(c.ints, at::kLong).to(at::kFloat);
            } else if (const auto* vf = attr(n, "value_float")) {
                c.tensor = at::tensor({vf->f()}, at::kFloat).reshape({});
            } else {
                fail(n, "no value");
            }
            constants_[n.output(0)] = c;
            return;
        }
        if (op == "Shape") {
            auto s = shape_of(value(n, 0));
            Constant c;
            c.is_int = true;
            c.ints = {kBatch};
            c.ints.insert(c.ints.end(), s.begin(), s.end());
            int64_t start = attr_int(n, "start", 0),
                    end = attr_int(n, "end", static_cast<int64_t>(c.ints.size()));
            int64_t rank = static_cast<int64_t>(c.ints.size());
            start = std::clamp(start < 0 ? start + rank : start, int64_t{0}, rank);
            end = std::clamp(end < 0 ? end + rank : end, int64_t{0}, rank);
            c.ints =
                std::vector<int64_t>(c.ints.begin() + start, c.ints.begin() + std::max(start, end));
            constants_[n.output(0)] = c;
            return;
        }
        if ((op == "Gather" || op == "Unsqueeze" || op == "Concat" || op == "Squeeze" ||
             op == "Cast") &&
            all_constant(n)) {
            constants_[n.output(0)] = fold_int_op(n, constants_, path_);
            return;
        }
        if (op == "Pad") {
            import_pad(n);
            return;
        }
        // ---- aliases ----
        if (op == "Identity") {
            check_attrs(n, {});
            auto c = constants_.find(n.input(0));
            if (c != constants_.end()) {
                // PyTorch's export aliases a weight it folded twice (e.g. BN with default
                // statistics) through Identity.
                const Constant alias = c->second;
                constants_[n.output(0)] = alias;
            } else {
                values_[n.output(0)] = value(n, 0);
            }
            return;
        }
        if (op == "Dropout") {
            // Kept as Dropout (identity in eval mode) so that training the imported model uses it.
            check_attrs(n, {"ratio", "seed"});
            double ratio = attr_float(n, "ratio", 0.5);
            if (n.input_size() > 1 && !n.input(1).empty()) {
                ratio = require_constant(n, 1, "ratio").tensor.item<double>();
            }
            if (ratio <= 0.0) {
                values_[n.output(0)] = value(n, 0);
                return;
            }
            Node node;
            node.op = Op::kDropout;
            node.inputs = {value(n, 0)};
            node.attrs.p = ratio;
            add(std::move(node), n, index);
            return;
        }
        Node node;
        node.inputs = {value(n, 0)};
        if (op == "Conv") {
            check_attrs(n, {"group", "strides", "pads", "dilations", "kernel_shape", "auto_pad"});
            const Constant& w = require_constant(n, 1, "weight");
            if (w.tensor.dim() != 4) {
                fail(n, "only 2-D convolutions are supported");
            }
            node.op = Op::kConv2d;
            node.attrs.groups = attr_int(n, "group", 1);
            node.attrs.kernel = {w.tensor.size(2), w.tensor.size(3)};
            auto ks = attr_ints(n, "kernel_shape", node.attrs.kernel);
            if (ks != node.attrs.kernel) {
                fail(n, "kernel_shape does not match the weight");
            }
            node.attrs.stride = pair_attr(n, "strides", 1);
            node.attrs.dilation = pair_attr(n, "dilations", 1);
            node.attrs.padding = pads2d(n, node.inputs[0], node.attrs.kernel, node.attrs.stride,
                                        node.attrs.dilation);
            absorb_pad(n, node.attrs);
            node.attrs.out_channels = w.tensor.size(0);
            node.params["weight"] = w.tensor.clone();
            if (const Constant* b = constant(n, 2)) {
                node.params["bias"] = b->tensor.reshape({-1}).clone();
            } else if (n.input_size() > 2 && !n.input(2).empty()) {
                fail(n, "bias must be a constant initializer");
            }
            add(std::move(node), n, index);
        } else if (op == "BatchNormalization") {
            check_attrs(n, {"epsilon", "momentum", "training_mode", "spatial"});
            // Training-mode exports add running-statistics outputs; nothing may read them (value()
            // rejects an unknown input), and the running statistics come from the initializers.
            node.op = Op::kBatchNorm2d;
            node.attrs.eps = attr_float(n, "epsilon", 1e-5);
            node.attrs.momentum = 1.0 - attr_float(n, "momentum", 0.9);
            node.params["weight"] = require_constant(n, 1, "scale").tensor.reshape({-1}).clone();
            node.params["bias"] = require_constant(n, 2, "bias").tensor.reshape({-1}).clone();
            node.buffers["running_mean"] =
                require_constant(n, 3, "mean").tensor.reshape({-1}).clone();
            node.buffers["running_var"] =
                require_constant(n, 4, "var").tensor.reshape({-1}).clone();
            add(std::move(node), n, index);
        } else if (op == "Relu" || op == "Sigmoid" || op == "HardSwish" ||
                   op == "GlobalAveragePool") {
            check_attrs(n, {});
            node.op = op == "Relu"        ? Op::kReLU
                      : op == "Sigmoid"   ? Op::kSigmoid
                      : op == "HardSwish" ? Op::kHardSwish
                                          : Op::kGlobalAvgPool;
            add(std::move(node), n, index);
        } else if (op == "HardSigmoid") {
            check_attrs(n, {"alpha", "beta"});
            node.op = Op::kHardSigmoid;
            node.attrs.alpha = attr_float(n, "alpha", 0.2);
            node.attrs.beta = attr_float(n, "beta", 0.5);
            add(std::move(node), n, index);
        } else if (op == "Clip") {
            check_attrs(n, {"min", "max"});
            node.op = Op::kClip;
            double lo = attr_float(n, "min", -std::numeric_limits<double>::infinity());
            double hi = attr_float(n, "max", std::numeric_limits<double>::infinity());
            if (n.input_size() > 1 && !n.input(1).empty()) {
                lo = require_constant(n, 1, "min").tensor.item<double>();
            }
            if (n.input_size() > 2 && !n.input(2).empty()) {
                hi = require_constant(n, 2, "max").tensor.item<double>();
            }
            node.attrs.min = lo;
            node.attrs.max = hi;
            add(std::move(node), n, index);
        } else if (op == "Add" || op == "Mul") {
            check_attrs(n, {});
            const Constant* c1 = constant(n, 1);
            const Constant* c0 = constant(n, 0);
            if (op == "Add" && (c0 || c1)) {
                fuse_bias(n, c1 ? value(n, 0) : value(n, 1), c1 ? *c1 : *c0);
                return;
            }
            if (c0 || c1) {
                fail(
                    n,
                    "a constant operand is not supported (both operands must be computed tensors)");
            }
            node.op = op == "Add" ? Op::kAdd : Op::kMul;
            node.inputs = {value(n, 0), value(n, 1)};
            add(std::move(node), n, index);
        } else if (op == "Concat") {
            check_attrs(n, {"axis"});
            node.op = Op::kConcat;
            node.inputs.clear();
            for (int k = 0; k < n.input_size(); ++k) {
                node.inputs.push_back(value(n, k));
            }
            int64_t rank = static_cast<int64_t>(shape_of(node.inputs[0]).size()) + 1;
            int64_t axis = attr_int(n, "axis", 1);
            node.attrs.axis = axis < 0 ? axis + rank : axis;
            if (node.attrs.axis < 1) {
                fail(n, "concatenation along the batch axis is not supported");
            }
            add(std::move(node), n, index);
        } else if (op == "MaxPool" || op == "AveragePool") {
            check_attrs(n, {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad",
                            "count_include_pad", "storage_order"});
            if (attr_int(n, "storage_order", 0) != 0) {
                fail(n, "storage_order 1 is not supported");
            }
            if (n.output_size() > 1 && !n.output(1).empty()) {
                fail(n, "the indices output is not supported");
            }
            node.op = op == "MaxPool" ? Op::kMaxPool : Op::kAvgPool;
            node.attrs.kernel = attr_ints(n, "kernel_shape", {});
            if (node.attrs.kernel.size() != 2) {
                fail(n, "kernel_shape must have 2 values");
            }
            node.attrs.stride = pair_attr(n, "strides", 1);
            node.attrs.dilation = pair_attr(n, "dilations", 1);
            if (op == "AveragePool" && node.attrs.dilation != std::vector<int64_t>{1, 1}) {
                fail(n, "dilated average pooling is not supported");
            }
            node.attrs.padding = pads2d(n, node.inputs[0], node.attrs.kernel, node.attrs.stride,
                                        node.attrs.dilation);
            node.attrs.ceil_mode = attr_int(n, "ceil_mode", 0) != 0;
            node.attrs.count_include_pad = attr_int(n, "count_include_pad", 0) != 0;
            absorb_pad(n, node.attrs);
            add(std::move(node), n, index);
        } else if (op == "Flatten") {
            check_attrs(n, {"axis"});
            int64_t rank = static_cast<int64_t>(shape_of(node.inputs[0]).size()) + 1;
            int64_t axis = attr_int(n, "axis", 1);
            axis = axis < 0 ? axis + rank : axis;
            if (axis != 1) {
                fail(n, fmt::format("axis {} is not supported (only 1: keep the batch)", axis));
            }
            node.op = Op::kFlatten;
            node.attrs.axis = 1;
            add(std::move(node), n, index);
        } else if (op == "Reshape") {
            check_attrs(n, {"allowzero"});
            const Constant& s = require_constant(n, 1, "shape");
            if (!s.is_int || s.ints.empty()) {
                fail(n, "shape must be a constant int64 vector");
            }
            auto in = shape_of(node.inputs[0]);
            std::vector<int64_t> target = s.ints;
            // The first entry must keep the batch: the symbolic batch, 0 (copy), or -1 with the
            // rest fixed. A file exported with a fixed batch size carries that size here: it stands
            // for the batch.
            if (fixed_batch_ > 0 && target[0] == fixed_batch_) {
                target[0] = kBatch;
            }
            if (!(target[0] == kBatch || target[0] == 0 || target[0] == -1)) {
                fail(n, fmt::format("shape [{}] does not keep the batch dimension",
                                    fmt::join(s.ints, ", ")));
            }
            bool first_is_minus1 = target[0] == -1;
            target.erase(target.begin());
            for (size_t k = 0; k < target.size(); ++k) {
                if (target[k] == 0) {
                    if (k + 1 >= in.size() + 1) {
                        fail(n, "0 in shape copies a dimension the input does not have");
                    }
                    target[k] = in[k];
                } else if (target[k] == kBatch) {
                    fail(n, "the batch dimension may only come first");
                }
            }
            if (first_is_minus1 && std::count(target.begin(), target.end(), -1) > 0) {
                fail(n, "shape has two unknown (-1) dimensions");
            }
            node.op = Op::kReshape;
            node.attrs.shape = target;
            add(std::move(node), n, index);
        } else if (op == "Gemm") {
            check_attrs(n, {"alpha", "beta", "transA", "transB"});
            if (attr_int(n, "transA", 0) != 0) {
                fail(n, "transA = 1 is not supported");
            }
            at::Tensor w = require_constant(n, 1, "B").tensor;
            if (w.dim() != 2) {
                fail(n, "B must be a matrix");
            }
            if (attr_int(n, "transB", 0) == 0) {
                w = w.t();
            }
            node.op = Op::kLinear;
            node.params["weight"] = (w * attr_float(n, "alpha", 1.0)).contiguous();
            node.attrs.out_channels = w.size(0);
            if (const Constant* c = constant(n, 2)) {
                if (c->tensor.numel() != w.size(0)) {
                    fail(n, "only a per-output bias C is supported");
                }
                node.params["bias"] = c->tensor.reshape({-1}) * attr_float(n, "beta", 1.0);
            } else if (n.input_size() > 2 && !n.input(2).empty()) {
                fail(n, "C must be a constant initializer");
            } else {
                node.params["bias"] = at::zeros({w.size(0)});
                linear_without_bias_.insert(n.output(0));
            }
            add(std::move(node), n, index);
        } else if (op == "MatMul") {
            check_attrs(n, {});
            const Constant& b = require_constant(n, 1, "B");
            if (b.tensor.dim() != 2) {
                fail(n, "B must be a matrix");
            }
            node.op = Op::kLinear;
            node.params["weight"] = b.tensor.t().contiguous();
            node.params["bias"] = at::zeros({b.tensor.size(1)});
            node.attrs.out_channels = b.tensor.size(1);
            linear_without_bias_.insert(n.output(0));
            add(std::move(node), n, index);
        } else {
            fail(n, "op type is not supported");
        }
    }

    /// Pad with zeros on H and W only: folded into the Conv or AveragePool that reads it.
    void import_pad(const onnx::NodeProto& n) {
        check_attrs(n, {"mode", "pads", "value"});
        if (attr_string(n, "mode", "constant") != "constant") {
            fail(n, "only constant padding is supported");
        }
        std::vector<int64_t> pads = attr_ints(n, "pads", {});
        double fill = attr_float(n, "value", 0.0);
        if (n.input_size() > 1 && !n.input(1).empty()) {
            pads = require_constant(n, 1, "pads").ints;
        }
        if (n.input_size() > 2 && !n.input(2).empty()) {
            fill = require_constant(n, 2, "constant_value").tensor.item<double>();
        }
        if (pads.size() != 8 || fill != 0.0) {
            fail(n, "only zero padding of a 4-D tensor is supported");
        }
        if (pads[0] != 0 || pads[1] != 0 || pads[4] != 0 || pads[5] != 0 || pads[2] != pads[6] ||
            pads[3] != pads[7]) {
            fail(n, fmt::format("pads [{}]: only symmetric padding of H and W is supported",
                                fmt::join(pads, ", ")));
        }
        int in = value(n, 0);
        std::vector<int64_t> pad = {pads[2], pads[3]};
        if (pending_pads_.count(n.input(0))) {
            pad[0] += pending_pads_.at(n.input(0))[0];
            pad[1] += pending_pads_.at(n.input(0))[1];
        }
        values_[n.output(0)] = in;
        if (pad[0] != 0 || pad[1] != 0) {
            pending_pads_[n.output(0)] = pad;
        }
    }

    /// Adds a preceding Pad's padding to a Conv's or AveragePool's.
    void absorb_pad(const onnx::NodeProto& n, Attrs& attrs) {
        auto it = pending_pads_.find(n.input(0));
        if (it != pending_pads_.end()) {
            attrs.padding[0] += it->second[0];
            attrs.padding[1] += it->second[1];
            if (n.op_type() == "AveragePool") {
                // Explicit zeros are counted in the average, as count_include_pad does.
                if (!attrs.count_include_pad &&
                    (attrs.padding[0] != it->second[0] || attrs.padding[1] != it->second[1])) {
                    fail(n, "mixes explicit zero padding with excluded padding");
                }
                attrs.count_include_pad = true;
            }
        }
    }

    /// Add(x, constant): a bias folded into the Linear that produced x (MatMul + Add, Gemm without
    /// C).
    void fuse_bias(const onnx::NodeProto& n, int producer, const Constant& bias) {
        Node& p = graph_.nodes()[static_cast<size_t>(producer)];
        bool from_linear = false;
        for (const auto& [name, id] : values_) {
            if (id == producer && linear_without_bias_.count(name)) {
                from_linear = true;
            }
        }
        if (!from_linear || p.op != Op::kLinear || bias.tensor.numel() != p.attrs.out_channels) {
            fail(n, "adding a constant is supported only as the bias of a preceding MatMul/Gemm");
        }
        p.params["bias"] = p.params["bias"] + bias.tensor.reshape({-1});
        for (auto it = linear_without_bias_.begin(); it != linear_without_bias_.end();) {
            it = values_.count(*it) && values_.at(*it) == producer ? linear_without_bias_.erase(it)
                                                                   : std::next(it);
        }
        values_[n.output(0)] = producer;
    }

    /// Removes nodes whose value no one reads (e.g. a side branch that only fed a folded Shape).
    void prune_unused() {
        auto& nodes = graph_.nodes();
        std::vector<bool> live(nodes.size(), false);
        live[0] = true;
        live[static_cast<size_t>(graph_.output())] = true;
        for (size_t i = nodes.size(); i-- > 1;) {
            if (live[i]) {
                for (int in : nodes[i].inputs) {
                    live[static_cast<size_t>(in)] = true;
                }
            }
        }
        std::vector<int> remap(nodes.size(), -1);
        Graph pruned(graph_.input_shape());
        remap[0] = 0;
        for (size_t i = 1; i < nodes.size(); ++i) {
            if (!live[i]) {
                continue;
            }
            Node node = nodes[i];
            for (int& in : node.inputs) {
                in = remap[static_cast<size_t>(in)];
            }
            remap[i] = pruned.add(std::move(node));
        }
        pruned.set_output(remap[static_cast<size_t>(graph_.output())]);
        graph_ = std::move(pruned);
    }

    std::string path_;
    OnnxImportOptions options_;
    int64_t opset_ = 0;
    int64_t fixed_batch_ = 0;  // the input's batch size when the file fixes it
    Graph graph_;
    std::map<std::string, int> values_;
    std::map<std::string, Constant> constants_;
    std::set<std::string> linear_without_bias_;
    std::map<std::string, std::vector<int64_t>>
        pending_pads_;  // value -> {pad_h, pad_w} still to absorb
};

}  // namespace

ModelFile import_onnx(const std::string& path, const OnnxImportOptions& options) {
    try {
        return Importer(path, options).run();
    } catch (const InputError& e) {
        // Graph checks (shapes, attributes) name the node, not the file: add it.
        const std::string what = e.what();
        if (what.rfind("failed to import", 0) == 0 || what.rfind("failed to read", 0) == 0) {
            throw;
        }
        throw InputError(fmt::format("failed to import {}: {}", path, what));
    } catch (const c10::Error& e) {
        throw InputError(fmt::format("failed to import {}: {}", path, e.what_without_backtrace()));
    }
}

ModelFile load_any_model(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    PF_CHECK(in.good(), InputError, "failed to read {}: {}", path,
             std::filesystem::exists(path) ? "cannot open" : "no such file");
    std::string head(8, '\0');
    in.read(head.data(), 8);
    if (in.gcount() == 8 && head == std::string("PFMODEL\0", 8)) {
        return load_model(path);
    }
    std::string ext = std::filesystem::path(path).extension().string();
    if (ext == ".pfm") {
        return load_model(path);  // reports the bad magic
    }
    return import_onnx(path);
}
}  // namespace pocketflow
