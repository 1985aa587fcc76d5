// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "pocketflow/graph.h"
#include "pocketflow/model.h"

namespace pocketflow {

/// Version of the .pfm format this build writes; it reads versions 1–3. Version 2 added
/// quantization (QuantSpec per node, weights packed at their bit width) and writes only the
/// attributes that differ from the defaults; version 3 stores sparse and codebook weights
/// compactly (include/pocketflow/weight_codec.h: an "enc" entry replaces the weight's raw data and
/// its weight_mask / weight_index buffers).
constexpr int kPfmFormatVersion = 3;

/// A model file's contents: graph (with weights) and metadata.
struct ModelFile {
    Graph graph;
    ModelMeta meta;
};

/// Writes a .pfm file atomically. Layout: magic "PFMODEL\0", u32 version, u64 header length,
/// JSON header (graph, metadata, tensor table), raw little-endian float32 tensor data (quantized
/// weights: their integers packed LSB first at their bit width; sparse and codebook weights:
/// weight_codec.h), u32 CRC-32 of everything before it.
void save_model(const std::string& path, const Graph& graph, const ModelMeta& meta);

/// Reads and validates a .pfm file; a missing, truncated or corrupted file is an InputError naming
/// the path and what is wrong.
ModelFile load_model(const std::string& path);

/// The bytes save_model writes, in memory (e.g. to send a model to other workers).
std::string encode_model(const Graph& graph, const ModelMeta& meta);
/// Reads encode_model's bytes, validated as load_model validates a file; `name` stands for the
/// path in messages.
ModelFile decode_model(const std::string& bytes, const std::string& name);

}  // namespace pocketflow
