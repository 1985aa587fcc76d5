// SPDX-License-Identifier: Apache-2.0
// ONNX values decoded for the importer (onnx_import.cpp): tensors with their sizes checked before
// anything is allocated, node attributes, constant folding of shape arithmetic, and pocketflow's
// metadata numbers.
#include "onnx_values.h"

#include <cstring>
#include <map>

#include <ATen/ATen.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

[[noreturn]] void fail_file(const std::string& path, const std::string& why) {
    throw InputError(fmt::format("failed to import {}: {}", path, why));
}

}  // namespace

/// "0.5,0.25": the numbers of a metadata entry; InputError naming the key and the value.
std::vector<double> parse_doubles(const std::string& key,
                                  const std::string& text,
                                  const std::string& path) {
    std::vector<double> out;
    size_t start = 0;
    while (start < text.size()) {
        size_t comma = text.find(',', start);
        const std::string item = text.substr(start, comma - start);
        char* end = nullptr;
        const double v = std::strtod(item.c_str(), &end);
        if (item.empty() || end != item.c_str() + item.size()) {
            fail_file(path, fmt::format("metadata {}: \"{}\" is not a list of numbers ({} is not "
                                        "a number)",
                                        key, text.size() > 80 ? text.substr(0, 80) + "..." : text,
                                        item.size() > 40 ? item.substr(0, 40) + "..." : item));
        }
        out.push_back(v);
        if (comma == std::string::npos) {
            break;
        }
        start = comma + 1;
    }
    return out;
}

Constant to_constant(const onnx::TensorProto& t, const std::string& what, const std::string& path) {
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
        fail_file(path,
                  what + " uses external data; save the model with its weights inside the file");
    }
    std::vector<int64_t> dims(t.dims().begin(), t.dims().end());
    int64_t n = 1;
    for (int64_t d : dims) {
        if (d < 0) {
            fail_file(path, what + " has a negative dimension");
        }
        if (d > 0 && n > (int64_t{1} << 40) / d) {
            fail_file(path, fmt::format("{} declares dimensions [{}]: over 2^40 elements", what,
                                        fmt::join(dims, ", ")));
        }
        n *= d;
    }
    // Sizes are checked before anything is allocated: an element takes at least one byte of
    // raw data or one entry of a typed list.
    const int64_t stored = !t.raw_data().empty()
                               ? static_cast<int64_t>(t.raw_data().size())
                               : static_cast<int64_t>(t.float_data_size()) + t.double_data_size() +
                                     t.int32_data_size() + t.int64_data_size();
    if (n > stored) {
        fail_file(path, fmt::format("{} declares {} elements ([{}]) but holds data for at most {}",
                                    what, n, fmt::join(dims, ", "), stored));
    }
    Constant c;
    switch (t.data_type()) {
        case onnx::TensorProto::FLOAT: {
            c.tensor = at::empty(dims, at::kFloat);
            if (!t.raw_data().empty()) {
                if (static_cast<int64_t>(t.raw_data().size()) != n * 4) {
                    fail_file(path, what + " has the wrong amount of data");
                }
                std::memcpy(c.tensor.data_ptr(), t.raw_data().data(), t.raw_data().size());
            } else {
                if (t.float_data_size() != n) {
                    fail_file(path, what + " has the wrong amount of data");
                }
                if (n > 0) {  // (an empty list has no data pointer to copy from)
                    std::memcpy(c.tensor.data_ptr(), t.float_data().data(),
                                static_cast<size_t>(n) * 4);
                }
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
                fail_file(path, what + " has the wrong amount of data");
            }
            c.tensor = at::tensor(v, at::kDouble).to(at::kFloat).reshape(dims);
            break;
        }
        case onnx::TensorProto::BOOL:
        case onnx::TensorProto::UINT8:
        case onnx::TensorProto::INT8: {
            // One byte an element: masks, and codebook indices (export --weights codebook:
            // Gather(codebook, Cast(indices))).
            const auto type = t.data_type();
            c.is_int = true;
            if (!t.raw_data().empty() && static_cast<int64_t>(t.raw_data().size()) == n) {
                for (char b : t.raw_data()) {
                    c.ints.push_back(type == onnx::TensorProto::BOOL   ? (b != 0 ? 1 : 0)
                                     : type == onnx::TensorProto::INT8 ? static_cast<int8_t>(b)
                                                                       : static_cast<uint8_t>(b));
                }
            } else if (t.int32_data_size() == n) {
                c.ints.assign(t.int32_data().begin(), t.int32_data().end());
            } else {
                fail_file(path, what + " has the wrong amount of data");
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
                    fail_file(path, what + " has the wrong amount of data");
                }
                for (int64_t i = 0; i < n; ++i) {
                    if (is64) {
                        std::memcpy(&c.ints[static_cast<size_t>(i)], t.raw_data().data() + i * 8,
                                    8);
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
                fail_file(path, what + " has the wrong amount of data");
            }
            c.tensor = at::tensor(c.ints, at::kLong).reshape(dims).to(at::kFloat);
            break;
        }
        default:
            fail_file(path, fmt::format(
                                "{} has data type {}, which is not supported (float, double, int8, "
                                "uint8, int32, "
                                "int64)",
                                what, t.data_type()));
    }
    return c;
}

[[noreturn]] void fail_node(const std::string& path,
                            const onnx::NodeProto& n,
                            const std::string& why) {
    throw InputError(
        fmt::format("failed to import {}: node '{}' ({}): {}", path, n.name(), n.op_type(), why));
}

const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name) {
    for (const auto& a : n.attribute()) {
        if (a.name() == name) {
            return &a;
        }
    }
    return nullptr;
}
int64_t attr_int(const onnx::NodeProto& n, const std::string& name, int64_t def) {
    const auto* a = attr(n, name);
    return a ? a->i() : def;
}
double attr_float(const onnx::NodeProto& n, const std::string& name, double def) {
    const auto* a = attr(n, name);
    return a ? a->f() : def;
}
std::vector<int64_t> attr_ints(const onnx::NodeProto& n,
                               const std::string& name,
                               std::vector<int64_t> def) {
    const auto* a = attr(n, name);
    return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : def;
}
std::string attr_string(const onnx::NodeProto& n, const std::string& name, const std::string& def) {
    const auto* a = attr(n, name);
    return a ? a->s() : def;
}

Constant fold_int_op(const onnx::NodeProto& n,
                     const std::map<std::string, Constant>& constants,
                     const std::string& path) {
    const std::string& op = n.op_type();
    Constant out;
    out.is_int = true;
    const Constant& a = constants.at(n.input(0));
    if (op == "Cast" && a.tensor.dim() > 1) {
        Constant c = a;  // a tensor (e.g. of codebook indices) keeps its shape
        const int64_t to = attr_int(n, "to", onnx::TensorProto::INT64);
        c.is_int = to != onnx::TensorProto::FLOAT && to != onnx::TensorProto::DOUBLE &&
                   to != onnx::TensorProto::FLOAT16;
        return c;
    }
    if (op == "Cast") {
        out = a;
    } else if (op == "Gather" && !a.is_int) {
        // A float table gathered by constant indices: a codebook decoding its layer's weight.
        const Constant& idx = constants.at(n.input(1));
        if (!idx.is_int || attr_int(n, "axis", 0) != 0 || a.tensor.dim() != 1) {
            fail_node(path, n,
                      "only gathering from a constant 1-D float table along axis 0 is supported");
        }
        at::Tensor k = idx.tensor.to(at::kLong);
        const int64_t size = a.tensor.numel();
        if (k.numel() > 0 && (k.min().item<int64_t>() < -size || k.max().item<int64_t>() >= size)) {
            fail_node(path, n, "index out of range");
        }
        k = at::where(k < 0, k + size, k);
        Constant w;
        w.tensor = a.tensor.index_select(0, k.reshape({-1})).reshape(k.sizes()).contiguous();
        return w;
    } else if (op == "Gather") {
        const Constant& idx = constants.at(n.input(1));
        if (!a.is_int || !idx.is_int || attr_int(n, "axis", 0) != 0) {
            fail_node(path, n,
                      "only gathering from a constant int vector along axis 0 is supported");
        }
        for (int64_t i : idx.ints) {
            int64_t k = i < 0 ? i + static_cast<int64_t>(a.ints.size()) : i;
            if (k < 0 || k >= static_cast<int64_t>(a.ints.size())) {
                fail_node(path, n, "index out of range");
            }
            out.ints.push_back(a.ints[static_cast<size_t>(k)]);
        }
    } else if (op == "Unsqueeze" || op == "Squeeze") {
        if (!a.is_int) {
            fail_node(path, n, "only int constants can be folded");
        }
        out.ints = a.ints;  // scalars and vectors are both flat lists here
    } else if (op == "Concat") {
        for (int k = 0; k < n.input_size(); ++k) {
            const Constant& c = constants.at(n.input(k));
            if (!c.is_int) {
                fail_node(path, n, "only int constants can be folded");
            }
            out.ints.insert(out.ints.end(), c.ints.begin(), c.ints.end());
        }
    }
    std::vector<int64_t> safe;
    for (int64_t v : out.ints) {
        safe.push_back(v == kBatch ? -1 : v);
    }
    out.tensor = at::tensor(safe, at::kLong).to(at::kFloat);
    return out;
}

}  // namespace pocketflow
