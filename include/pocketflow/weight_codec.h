// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Compact storage of constrained weights in a .pfm (sparsity.h, codebook.h): what makes a sparse
/// or codebook model really smaller on disk.
///
/// A weight is stored as positions of its non-zeros (none for a dense codebook layer) followed by
/// their values:
/// - positions: a bitmap (1 bit per weight), or gap codes of g bits (symbol s > 0: s − 1 zeros then
///   a non-zero; 0: 2^g − 1 zeros) — whichever is smallest, g = 1–8;
/// - values: float32, or symbols (codebook indices; uniform-quantized integers offset by
///   2^(b−1));
/// and every symbol stream is b-bit packed or canonical-Huffman coded, whichever is smaller.
/// The choices go in the tensor's JSON entry ("enc"); decoding checks every count and range.

/// A stream of symbols in [0, 2^bits): byte 0 the mode (0 packed, 1 Huffman), byte 1 the bits;
/// Huffman: then 4-bit code lengths of the 2^bits symbols (0: absent); then the payload, bits LSB
/// first. `huffman` false forces packing.
std::string encode_symbols(const std::vector<uint8_t>& symbols, int bits, bool huffman = true);
/// Decodes `count` symbols; InputError on a malformed stream.
std::vector<uint8_t> decode_symbols(const char* data, size_t size, int64_t count);

/// Huffman code lengths (≤ max_length, 0 for unused symbols) of symbol frequencies.
std::vector<int> huffman_code_lengths(const std::vector<int64_t>& frequencies, int max_length = 15);

/// The stored form of a weight with a mask or a codebook (has_weight_constraints, sparsity.h):
/// JSON description and bytes.
struct EncodedWeight {
    nlohmann::json meta;
    std::string bytes;
};
EncodedWeight encode_weight(const Node& node);

/// Restores a node's weight (and its weight_mask / weight_index) from encode_weight's output; the
/// node must already hold its codebook. `shape` is the weight's. A uniform-quantized weight comes
/// back as its integers (int32, returned; the caller scales them), else the result is undefined.
/// Throws InputError (plain message, the caller names the file) on inconsistent data.
at::Tensor decode_weight(Node& node,
                         const std::vector<int64_t>& shape,
                         const nlohmann::json& meta,
                         const char* data,
                         size_t size);

/// Per layer storage breakdown, for `info` and summaries.
struct WeightStorage {
    int64_t dense_bytes = 0;     ///< float32
    int64_t position_bytes = 0;  ///< where the non-zeros are
    int64_t value_bytes = 0;     ///< their values (symbols or floats)
    std::string positions;       ///< dense | bitmap | gaps<g>
    std::string values;          ///< float | ints | index, with "+huffman" when coded
};
WeightStorage weight_storage(const Node& node);

}  // namespace pocketflow
