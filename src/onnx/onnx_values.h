// SPDX-License-Identifier: Apache-2.0
// Internal to src/onnx: values the importer reads from ONNX protobufs.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <onnx/onnx_pb.h>

namespace pocketflow {

constexpr int64_t kBatch = std::numeric_limits<int64_t>::min();  // symbolic batch in folded shapes

/// A value known at import time: a float tensor (weights) or an int vector (shapes, axes).
struct Constant {
    at::Tensor tensor;          // float32 for weights
    std::vector<int64_t> ints;  // int64 data (shapes; kBatch marks the symbolic batch)
    bool is_int = false;
};

/// A TensorProto as a Constant; InputError "failed to import <path>: <what> ..." when it is
/// external, oversized, inconsistent or of an unsupported type.
Constant to_constant(const onnx::TensorProto& t, const std::string& what, const std::string& path);

/// "0.5,0.25": the numbers of a metadata entry; InputError naming the file, key and value.
std::vector<double> parse_doubles(const std::string& key,
                                  const std::string& text,
                                  const std::string& path);

/// InputError "failed to import <path>: node '<name>' (<op>): <why>".
[[noreturn]] void fail_node(const std::string& path,
                            const onnx::NodeProto& n,
                            const std::string& why);

/// A node's attribute by name (nullptr when absent), and typed reads with defaults.
const onnx::AttributeProto* attr(const onnx::NodeProto& n, const std::string& name);
int64_t attr_int(const onnx::NodeProto& n, const std::string& name, int64_t def);
double attr_float(const onnx::NodeProto& n, const std::string& name, double def);
std::vector<int64_t> attr_ints(const onnx::NodeProto& n,
                               const std::string& name,
                               std::vector<int64_t> def);
std::string attr_string(const onnx::NodeProto& n, const std::string& name, const std::string& def);

/// Cast, Gather, Unsqueeze/Squeeze or Concat over constants (shape arithmetic, codebook decoding),
/// evaluated at import time.
Constant fold_int_op(const onnx::NodeProto& n,
                     const std::map<std::string, Constant>& constants,
                     const std::string& path);

}  // namespace pocketflow
