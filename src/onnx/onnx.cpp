// SPDX-License-Identifier: Apache-2.0
// ONNX import (ONNX protobufs → graph IR) and export (graph IR → ONNX), with Debian's libonnx.
#include "pocketflow/onnx.h"

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
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

constexpr int64_t kBatch = std::numeric_limits<int64_t>::min();  // symbolic batch in folded shapes

// ------------------------------------------------------------------------------------------------
// Import

/// A value known at import time: a float tensor (weights) or an int vector (shapes, axes).
struct Constant {
    at::Tensor tensor;          // float32 for weights
    std::vector<int64_t> ints;  // int64 data (shapes; kBatch marks the symbolic batch)
    bool is_int = false;
};

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
            constants_[t.name()] = to_constant(t, "initializer " + t.name());
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
                file.meta.mean = parse_doubles(p.value());
            } else if (p.key() == "pocketflow.std") {
                file.meta.std = parse_doubles(p.value());
            }
        }
        file.graph = std::move(graph_);
        return file;
    }

private:
    [[noreturn]] void fail_file(const std::string& why) const {
        throw InputError(fmt::format("failed to import {}: {}", path_, why));
    }
    [[noreturn]] void fail(const onnx::NodeProto& n, const std::string& why) const {
        throw InputError(fmt::format("failed to import {}: node '{}' ({}): {}", path_, n.name(),
                                     n.op_type(), why));
    }

    static std::vector<double> parse_doubles(const std::string& text) {
        std::vector<double> out;
        size_t start = 0;
        while (start < text.size()) {
            size_t comma = text.find(',', start);
            out.push_back(std::stod(text.substr(start, comma - start)));
            if (comma == std::string::npos) {
                break;
            }
            start = comma + 1;
        }
        return out;
    }

    Constant to_constant(const onnx::TensorProto& t, const std::string& what) const {
        if (t.data_location() == onnx::TensorProto::EXTERNAL) {
            fail_file(what +
                      " uses external data; save the model with its weights inside the file");
        }
        std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
        int64_t n = 1;
        for (int64_t d : dims) {
            if (d < 0) {
                fail_file(what + " has a negative dimension");
            }
            n *= d;
        }
        Constant c;
        switch (t.data_type()) {
            case onnx::TensorProto::FLOAT: {
                c.tensor = at::empty(dims, at::kFloat);
                if (!t.raw_data().empty()) {
                    if (static_cast<int64_t>(t.raw_data().size()) != n * 4) {
                        fail_file(what + " has the wrong amount of data");
                    }
                    std::memcpy(c.tensor.data_ptr(), t.raw_data().data(), t.raw_data().size());
                } else {
                    if (t.float_data_size() != n) {
                        fail_file(what + " has the wrong amount of data");
                    }
                    std::memcpy(c.tensor.data_ptr(), t.float_data().data(),
                                static_cast<size_t>(n) * 4);
                }
                break;
            }
            case onnx::TensorProto::DOUBLE: {
                std::vector<double> v(static_cast<size_t>(n));
                if (!t.raw_data().empty() && static_cast<int64_t>(t.raw_data().size()) == n * 8) {
                    std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
                } else if (t.double_data_size() == n) {
                    std::copy(t.double_data().begin(), t.double_data().end(), v.begin());
                } else {
                    fail_file(what + " has the wrong amount of data");
                }
                c.tensor = at::tensor(v, at::kDouble).to(at::kFloat).reshape(dims);
                break;
            }
            case onnx::TensorProto::BOOL: {
                c.is_int = true;
                if (!t.raw_data().empty() && static_cast<int64_t>(t.raw_data().size()) == n) {
                    for (char b : t.raw_data()) {
                        c.ints.push_back(b != 0 ? 1 : 0);
                    }
                } else if (t.int32_data_size() == n) {
                    c.ints.assign(t.int32_data().begin(), t.int32_data().end());
                } else {
                    fail_file(what + " has the wrong amount of data");
                }
                c.tensor = at::tensor(c.ints, at::kLong).reshape(dims).to(at::kFloat);
                break;
            }
            case onnx::TensorProto::INT64:
            case onnx::TensorProto::INT32: {
                bool is64 = t.data_type() == onnx::TensorProto::INT64;
                c.is_int = true;
                c.ints.resize(static_cast<size_t>(n));
                if (!t.raw_data().empty()) {
                    if (static_cast<int64_t>(t.raw_data().size()) != n * (is64 ? 8 : 4)) {
                        fail_file(what + " has the wrong amount of data");
                    }
                    for (int64_t i = 0; i < n; ++i) {
                        if (is64) {
                            std::memcpy(&c.ints[static_cast<size_t>(i)],
                                        t.raw_data().data() + i * 8, 8);
                        } else {
                            int32_t v = 0;
                            std::memcpy(&v, t.raw_data().data() + i * 4, 4);
                            c.ints[static_cast<size_t>(i)] = v;
                        }
                    }
                } else if (is64 && t.int64_data_size() == n) {
                    std::copy(t.int64_data().begin(), t.int64_data().end(), c.ints.begin());
                } else if (!is64 && t.int32_data_size() == n) {
                    std::copy(t.int32_data().begin(), t.int32_data().end(), c.ints.begin());
                } else {
                    fail_file(what + " has the wrong amount of data");
                }
                c.tensor = at::tensor(c.ints, at::kLong).reshape(dims).to(at::kFloat);
                break;
            }
            default:
                fail_file(fmt::format(
                    "{} has data type {}, which is not supported (float, double, int32, int64)",
                    what, t.data_type()));
        }
        return c;
    }

    const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) const {
        for (const auto& a : n.attribute()) {
            if (a.name() == name) {
                return &a;
            }
        }
        return nullptr;
    }
    int64_t attr_int(const onnx::NodeProto& n, const std::string& name, int64_t def) const {
        const auto* a = attr(n, name);
        return a ? a->i() : def;
    }
    double attr_float(const onnx::NodeProto& n, const std::string& name, double def) const {
        const auto* a = attr(n, name);
        return a ? a->f() : def;
    }
    std::vector<int64_t> attr_ints(const onnx::NodeProto& n,
                                   const std::string& name,
                                   std::vector<int64_t> def) const {
        const auto* a = attr(n, name);
        return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : def;
    }
    std::string attr_string(const onnx::NodeProto& n,
                            const std::string& name,
                            const std::string& def) const {
        const auto* a = attr(n, name);
        return a ? a->s() : def;
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
    bool all_constant(const onnx::NodeProto& n) const {
        for (int k = 0; k < n.input_size(); ++k) {
            if (!n.input(k).empty() && !constants_.count(n.input(k))) {
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
        // ---- constant folding (shapes, axes) ----
        if (op == "Constant") {
            check_attrs(n, {"value", "value_int", "value_ints", "value_float", "value_floats"});
            Constant c;
            if (const auto* a = attr(n, "value")) {
                c = to_constant(a->t(), "constant " + n.output(0));
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
            fold_int_op(n);
            return;
        }
        if (op == "Pad") {
            import_pad(n);
            return;
        }
        // ---- aliases ----
        if (op == "Identity") {
            check_attrs(n, {});
            values_[n.output(0)] = value(n, 0);
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

    void fold_int_op(const onnx::NodeProto& n) {
        const std::string& op = n.op_type();
        Constant out;
        out.is_int = true;
        const Constant& a = constants_.at(n.input(0));
        if (op == "Cast") {
            out = a;
        } else if (op == "Gather") {
            const Constant& idx = constants_.at(n.input(1));
            if (!a.is_int || !idx.is_int || attr_int(n, "axis", 0) != 0) {
                fail(n, "only gathering from a constant int vector along axis 0 is supported");
            }
            for (int64_t i : idx.ints) {
                int64_t k = i < 0 ? i + static_cast<int64_t>(a.ints.size()) : i;
                if (k < 0 || k >= static_cast<int64_t>(a.ints.size())) {
                    fail(n, "index out of range");
                }
                out.ints.push_back(a.ints[static_cast<size_t>(k)]);
            }
        } else if (op == "Unsqueeze" || op == "Squeeze") {
            if (!a.is_int) {
                fail(n, "only int constants can be folded");
            }
            out.ints = a.ints;  // scalars and vectors are both flat lists here
        } else if (op == "Concat") {
            for (int k = 0; k < n.input_size(); ++k) {
                const Constant& c = constants_.at(n.input(k));
                if (!c.is_int) {
                    fail(n, "only int constants can be folded");
                }
                out.ints.insert(out.ints.end(), c.ints.begin(), c.ints.end());
            }
        }
        std::vector<int64_t> safe;
        for (int64_t v : out.ints) {
            safe.push_back(v == kBatch ? -1 : v);
        }
        out.tensor = at::tensor(safe, at::kLong).to(at::kFloat);
        constants_[n.output(0)] = out;
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
        names_[0] = "input";
        add_value_info(g_->add_input(), "input", graph_.input_shape());
        for (size_t i = 1; i < nodes.size(); ++i) {
            const Node& n = nodes[i];
            names_[i] = static_cast<int>(i) == graph_.output() ? "logits" : n.name;
            export_node(n, names_[i]);
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

    std::string in(const Node& n, size_t k) const {
        return names_[static_cast<size_t>(n.inputs[k])];
    }

    void export_conv(const Node& n, const std::string& out) {
        std::vector<std::string> inputs = {in(n, 0),
                                           initializer(n.name + ".weight", n.params.at("weight"))};
        if (n.params.count("bias")) {
            inputs.push_back(initializer(n.name + ".bias", n.params.at("bias")));
        }
        auto* c = node("Conv", n.name, inputs, out);
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
                std::vector<std::string> inputs = {
                    in(n, 0), initializer(n.name + ".weight", n.params.at("weight"))};
                if (n.params.count("bias")) {
                    inputs.push_back(initializer(n.name + ".bias", n.params.at("bias")));
                }
                set_int(node("Gemm", n.name, inputs, out), "transB", 1);
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
};

}  // namespace

ModelFile import_onnx(const std::string& path, const OnnxImportOptions& options) {
    return Importer(path, options).run();
}

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

std::string ort_runner_path() {
    namespace fs = std::filesystem;
    std::vector<fs::path> candidates;
    if (const char* env = std::getenv("POCKETFLOW_ORT_RUNNER")) {
        candidates.emplace_back(env);
    }
    candidates.emplace_back(fs::path(POCKETFLOW_SOURCE_DIR) / "tools" / "ort" / "run.js");
    for (const auto& c : candidates) {
        if (fs::is_regular_file(c) &&
            fs::is_directory(c.parent_path() / "node_modules" / "onnxruntime-node")) {
            return c.string();
        }
    }
    return "";
}

std::vector<OrtRun> run_onnxruntime(const std::vector<std::string>& onnx_paths,
                                    const at::Tensor& input,
                                    int64_t warmup,
                                    int64_t repeat,
                                    int64_t threads) {
    namespace fs = std::filesystem;
    std::string runner = ort_runner_path();
    PF_CHECK(!runner.empty(), Error,
             "ONNX Runtime is not installed (tools/ort/node_modules): run tools/setup.sh --ort");
    PF_CHECK(!onnx_paths.empty(), Error, "no ONNX model to run");
    ScopedTempDir scratch("pocketflow-ort");
    const fs::path& dir = scratch.path();
    at::Tensor x = input.detach().to(at::kFloat).contiguous();
    write_file_atomic(dir / "input.f32", std::string_view(static_cast<const char*>(x.data_ptr()),
                                                          static_cast<size_t>(x.numel()) * 4));
    auto quote = [](const std::string& text) {  // one shell word, whatever the path holds
        std::string q = "'";
        for (char c : text) {
            q += c == '\'' ? std::string("'\\''") : std::string(1, c);
        }
        return q + "'";
    };
    std::string models;
    for (const auto& path : onnx_paths) {
        models += "--model " + quote(path) + " ";
    }
    std::string cmd = fmt::format(
        "node {} {}--input {} --shape {} --output {} --warmup {} --repeat {} --threads {} 2>{}",
        quote(runner), models, quote((dir / "input.f32").string()), fmt::join(x.sizes().vec(), ","),
        quote((dir / "output.f32").string()), warmup, repeat, threads,
        quote((dir / "err.txt").string()));
    std::string out;
    FILE* pipe = ::popen(cmd.c_str(), "r");
    PF_CHECK(pipe != nullptr, Error, "failed to start node for ONNX Runtime");
    char buf[4096];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) {
        out.append(buf, n);
    }
    int status = ::pclose(pipe);
    if (status != 0) {
        std::string err = fs::exists(dir / "err.txt") ? read_file(dir / "err.txt") : "";
        while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) {
            err.pop_back();
        }
        throw Error(fmt::format("ONNX Runtime failed on {}: {}", fmt::join(onnx_paths, ", "),
                                err.empty() ? "node exited with an error" : err));
    }
    const nlohmann::json results = nlohmann::json::parse(out).at("results");
    PF_CHECK(results.size() == onnx_paths.size(), Error,
             "ONNX Runtime reported {} results for {} models", results.size(), onnx_paths.size());
    std::vector<OrtRun> runs;
    for (const auto& j : results) {
        OrtRun r;
        r.times_ms = j.at("times_ms").get<std::vector<double>>();
        r.median_ms = j.at("median_ms").get<double>();
        r.p90_ms = j.at("p90_ms").get<double>();
        runs.push_back(std::move(r));
    }
    auto shape = results.at(0).at("output_shape").get<std::vector<int64_t>>();
    std::string bytes = read_file(dir / "output.f32");
    runs[0].output = at::empty(shape, at::kFloat);
    PF_CHECK(static_cast<int64_t>(bytes.size()) == runs[0].output.numel() * 4, Error,
             "ONNX Runtime returned a short output");
    std::memcpy(runs[0].output.data_ptr(), bytes.data(), bytes.size());
    return runs;
}

OrtRun run_onnxruntime(const std::string& onnx_path,
                       const at::Tensor& input,
                       int64_t warmup,
                       int64_t repeat,
                       int64_t threads) {
    return std::move(
        run_onnxruntime(std::vector<std::string>{onnx_path}, input, warmup, repeat, threads)
            .front());
}

}  // namespace pocketflow
