// SPDX-License-Identifier: Apache-2.0
// Compact storage of sparse and codebook weights: position coding, symbol packing, Huffman.
#include "pocketflow/weight_codec.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include <ATen/ATen.h>

#include "pocketflow/error.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"

namespace pocketflow {

namespace {

constexpr int kMaxCodeLength = 15;

class BitWriter {
public:
    void put(uint32_t value, int bits) {  // LSB first
        for (int i = 0; i < bits; ++i) {
            bit((value >> i) & 1U);
        }
    }
    void put_code(uint32_t code, int length) {  // MSB first (canonical Huffman)
        for (int i = length - 1; i >= 0; --i) {
            bit((code >> i) & 1U);
        }
    }
    void bit(uint32_t b) {
        if (used_ == 0) {
            out_.push_back('\0');
        }
        out_.back() = static_cast<char>(static_cast<uint8_t>(out_.back()) | (b << used_));
        used_ = (used_ + 1) % 8;
    }
    std::string take() { return std::move(out_); }

private:
    std::string out_;
    int used_ = 0;
};

class BitReader {
public:
    BitReader(const char* data, size_t size) : data_(data), size_(size) {}
    uint32_t bit() {
        if (pos_ >= size_ * 8) {
            throw InputError("a compressed weight stream ends early");
        }
        const uint32_t b = (static_cast<uint8_t>(data_[pos_ / 8]) >> (pos_ % 8)) & 1U;
        ++pos_;
        return b;
    }
    uint32_t get(int bits) {
        uint32_t v = 0;
        for (int i = 0; i < bits; ++i) {
            v |= bit() << i;
        }
        return v;
    }
    size_t bytes_used() const { return (pos_ + 7) / 8; }

private:
    const char* data_;
    size_t size_;
    size_t pos_ = 0;
};

/// Canonical codes from lengths: codes[s] for symbols with a length.
std::vector<uint32_t> canonical_codes(const std::vector<int>& lengths) {
    std::vector<int> count(kMaxCodeLength + 1, 0);
    for (int l : lengths) {
        ++count[static_cast<size_t>(l)];
    }
    count[0] = 0;
    std::vector<uint32_t> next(kMaxCodeLength + 2, 0);
    uint32_t code = 0;
    for (int len = 1; len <= kMaxCodeLength; ++len) {
        code = (code + static_cast<uint32_t>(count[static_cast<size_t>(len - 1)])) << 1;
        next[static_cast<size_t>(len)] = code;
    }
    std::vector<uint32_t> codes(lengths.size(), 0);
    for (size_t s = 0; s < lengths.size(); ++s) {
        if (lengths[s] > 0) {
            codes[s] = next[static_cast<size_t>(lengths[s])]++;
        }
    }
    return codes;
}

int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

}  // namespace

std::vector<int> huffman_code_lengths(const std::vector<int64_t>& frequencies, int max_length) {
    std::vector<int64_t> freq = frequencies;
    std::vector<int> lengths(freq.size(), 0);
    size_t used = 0;
    for (int64_t f : freq) {
        used += f > 0 ? 1 : 0;
    }
    if (used == 0) {
        return lengths;
    }
    if (used == 1) {
        for (size_t s = 0; s < freq.size(); ++s) {
            lengths[s] = freq[s] > 0 ? 1 : 0;
        }
        return lengths;
    }
    while (true) {
        // Repeatedly merge the two lightest groups; every merge lengthens its members' codes.
        std::vector<std::pair<int64_t, std::vector<size_t>>> groups;
        for (size_t s = 0; s < freq.size(); ++s) {
            if (freq[s] > 0) {
                groups.push_back({freq[s], {s}});
            }
        }
        std::fill(lengths.begin(), lengths.end(), 0);
        while (groups.size() > 1) {
            std::stable_sort(groups.begin(), groups.end(),
                             [](const auto& a, const auto& b) { return a.first > b.first; });
            auto b = std::move(groups.back());
            groups.pop_back();
            auto& a = groups.back();
            for (size_t s : a.second) {
                ++lengths[s];
            }
            for (size_t s : b.second) {
                ++lengths[s];
            }
            a.first += b.first;
            a.second.insert(a.second.end(), b.second.begin(), b.second.end());
        }
        if (*std::max_element(lengths.begin(), lengths.end()) <= max_length) {
            return lengths;
        }
        for (int64_t& f : freq) {  // flatten the distribution until the code fits
            f = f > 0 ? std::max<int64_t>(1, f >> 1) : 0;
        }
    }
}

std::string encode_symbols(const std::vector<uint8_t>& symbols, int bits, bool huffman) {
    PF_CHECK(bits >= 1 && bits <= 8, Error, "symbol width {} outside 1–8", bits);
    const size_t alphabet = size_t{1} << bits;
    std::vector<int64_t> freq(alphabet, 0);
    for (uint8_t s : symbols) {
        PF_CHECK(s < alphabet, Error, "symbol {} does not fit {} bits", s, bits);
        ++freq[s];
    }
    const auto n = static_cast<int64_t>(symbols.size());
    const int64_t packed_size = ceil_div(n * bits, 8);
    std::vector<int> lengths;
    int64_t huffman_size = -1;
    if (huffman && n > 0) {
        lengths = huffman_code_lengths(freq, kMaxCodeLength);
        int64_t total = 0;
        for (size_t s = 0; s < alphabet; ++s) {
            total += freq[s] * lengths[s];
        }
        huffman_size = ceil_div(static_cast<int64_t>(alphabet), 2) + ceil_div(total, 8);
    }
    BitWriter w;
    std::string out(2, '\0');
    out[1] = static_cast<char>(bits);
    if (huffman_size >= 0 && huffman_size < packed_size) {
        out[0] = 1;
        for (size_t s = 0; s < alphabet; s += 2) {
            const int hi = s + 1 < alphabet ? lengths[s + 1] : 0;
            out.push_back(static_cast<char>(lengths[s] | (hi << 4)));
        }
        std::vector<uint32_t> codes = canonical_codes(lengths);
        for (uint8_t s : symbols) {
            w.put_code(codes[s], lengths[s]);
        }
    } else {
        for (uint8_t s : symbols) {
            w.put(s, bits);
        }
    }
    return out + w.take();
}

std::vector<uint8_t> decode_symbols(const char* data, size_t size, int64_t count) {
    PF_CHECK(size >= 2 && count >= 0, InputError, "a compressed weight stream is too short");
    const int mode = static_cast<uint8_t>(data[0]);
    const int bits = static_cast<uint8_t>(data[1]);
    PF_CHECK((mode == 0 || mode == 1) && bits >= 1 && bits <= 8, InputError,
             "a compressed weight stream has an unknown header ({} {})", mode, bits);
    const size_t alphabet = size_t{1} << bits;
    // Sizes are checked before anything is allocated: a packed stream has an exact size, and a
    // Huffman code spends at least one bit a symbol.
    if (mode == 0) {
        PF_CHECK(static_cast<int64_t>(size) - 2 == ceil_div(count * bits, 8), InputError,
                 "a packed weight stream has {} bytes for {} {}-bit symbols", size - 2, count,
                 bits);
        std::vector<uint8_t> out(static_cast<size_t>(count));
        BitReader r(data + 2, size - 2);
        for (auto& s : out) {
            s = static_cast<uint8_t>(r.get(bits));
        }
        return out;
    }
    const size_t table = static_cast<size_t>(ceil_div(static_cast<int64_t>(alphabet), 2));
    PF_CHECK(size >= 2 + table, InputError, "a Huffman weight stream lacks its code table");
    PF_CHECK(static_cast<int64_t>(size - 2 - table) >= ceil_div(count, 8), InputError,
             "a compressed weight stream ends early");
    std::vector<uint8_t> out(static_cast<size_t>(count));
    std::vector<int> lengths(alphabet);
    std::vector<int> per_length(kMaxCodeLength + 1, 0);
    for (size_t s = 0; s < alphabet; ++s) {
        const auto byte = static_cast<uint8_t>(data[2 + s / 2]);
        lengths[s] = s % 2 == 0 ? (byte & 0xF) : (byte >> 4);
        ++per_length[static_cast<size_t>(lengths[s])];
    }
    // Canonical decoding (as in zlib's puff): symbols in code order, counts per length.
    int64_t left = 1;
    for (int len = 1; len <= kMaxCodeLength; ++len) {
        left = left * 2 - per_length[static_cast<size_t>(len)];
        PF_CHECK(left >= 0, InputError, "a Huffman weight stream has an impossible code table");
    }
    std::vector<uint8_t> sorted;
    for (int len = 1; len <= kMaxCodeLength; ++len) {
        for (size_t s = 0; s < alphabet; ++s) {
            if (lengths[s] == len) {
                sorted.push_back(static_cast<uint8_t>(s));
            }
        }
    }
    PF_CHECK(count == 0 || !sorted.empty(), InputError,
             "a Huffman weight stream has an empty code table");
    BitReader r(data + 2 + table, size - 2 - table);
    for (auto& s : out) {
        int code = 0, first = 0, index = 0;
        bool found = false;
        for (int len = 1; len <= kMaxCodeLength; ++len) {
            code |= static_cast<int>(r.bit());
            const int n = per_length[static_cast<size_t>(len)];
            if (code - first < n) {
                s = sorted[static_cast<size_t>(index + code - first)];
                found = true;
                break;
            }
            index += n;
            first = (first + n) << 1;
            code <<= 1;
        }
        PF_CHECK(found, InputError, "a Huffman weight stream holds an invalid code");
    }
    PF_CHECK(r.bytes_used() == size - 2 - table, InputError,
             "a Huffman weight stream has {} bytes after its symbols",
             size - 2 - table - r.bytes_used());
    return out;
}

namespace {

/// Positions of the non-zeros: the smallest of a bitmap and gap codes of 1–8 bits.
void encode_positions(const uint8_t* keep, int64_t numel, nlohmann::json& meta, std::string& out) {
    BitWriter bitmap;
    for (int64_t i = 0; i < numel; ++i) {
        bitmap.bit(keep[i]);
    }
    std::string best = bitmap.take();
    meta["positions"] = "bitmap";
    for (int g = 1; g <= 8; ++g) {
        const int64_t skip = (int64_t{1} << g) - 1;  // zeros skipped by symbol 0
        std::vector<uint8_t> syms;
        int64_t zeros = 0;
        for (int64_t i = 0; i < numel; ++i) {
            if (!keep[i]) {
                ++zeros;
                continue;
            }
            while (zeros > skip - 1) {
                syms.push_back(0);
                zeros -= skip;
            }
            syms.push_back(static_cast<uint8_t>(zeros + 1));
            zeros = 0;
        }
        std::string s = encode_symbols(syms, g);
        if (s.size() < best.size()) {
            best = std::move(s);
            meta["positions"] = "gaps";
            meta["gap_bits"] = g;
            meta["pos_symbols"] = syms.size();
        }
    }
    if (meta["positions"] == "bitmap") {
        meta.erase("gap_bits");
        meta.erase("pos_symbols");
    }
    meta["pos_bytes"] = best.size();
    out += best;
}

}  // namespace

EncodedWeight encode_weight(const Node& node) {
    PF_CHECK(has_weight_constraints(node), Error, "{}: no mask or codebook to encode", node.name);
    const at::Tensor w = node.params.at("weight").detach().contiguous().reshape({-1});
    const int64_t numel = w.numel();
    at::Tensor keep = has_mask(node)
                          ? node.buffers.at("weight_mask").contiguous().reshape({-1}).to(at::kByte)
                          : at::ones({numel}, at::kByte);
    at::Tensor positions = keep.nonzero().reshape({-1});
    const int64_t nnz = positions.numel();
    EncodedWeight e;
    e.meta = {{"nnz", nnz}};
    if (has_mask(node) && nnz < numel) {
        encode_positions(keep.data_ptr<uint8_t>(), numel, e.meta, e.bytes);
    } else {
        e.meta["positions"] = "dense";  // (an all-true mask: nothing to say where)
        e.meta["pos_bytes"] = 0;
        if (has_mask(node)) {
            e.meta["mask"] = true;
        }
    }
    if (has_codebook(node)) {
        const int bits = static_cast<int>(std::log2(node.params.at("codebook").numel()));
        at::Tensor idx =
            node.buffers.at("weight_index").contiguous().reshape({-1}).index_select(0, positions);
        const uint8_t* p = idx.data_ptr<uint8_t>();
        e.meta["values"] = "index";
        e.meta["value_bits"] = bits;
        e.bytes += encode_symbols(std::vector<uint8_t>(p, p + nnz), bits);
    } else if (node.quant.weight_bits > 0) {
        const int bits = node.quant.weight_bits;
        at::Tensor q = weight_ints(node).contiguous().reshape({-1}).index_select(0, positions) +
                       (1 << (bits - 1));
        at::Tensor q8 = q.to(at::kByte).contiguous();
        const uint8_t* p = q8.data_ptr<uint8_t>();
        e.meta["values"] = "ints";
        e.meta["value_bits"] = bits;
        e.bytes += encode_symbols(std::vector<uint8_t>(p, p + nnz), bits);
    } else {
        at::Tensor v = w.index_select(0, positions).to(at::kFloat).contiguous();
        e.meta["values"] = "float";
        e.bytes.append(static_cast<const char*>(v.data_ptr()),
                       static_cast<size_t>(nnz) * sizeof(float));
    }
    e.meta["bytes"] = e.bytes.size();
    return e;
}

at::Tensor decode_weight(Node& node,
                         const std::vector<int64_t>& shape,
                         const nlohmann::json& meta,
                         const char* data,
                         size_t size) {
    int64_t numel = 1;
    for (int64_t d : shape) {
        numel *= d;
    }
    const auto nnz = meta.at("nnz").get<int64_t>();
    const auto pos_bytes = meta.at("pos_bytes").get<uint64_t>();
    const auto where = meta.at("positions").get<std::string>();
    PF_CHECK(nnz >= 0 && nnz <= numel && pos_bytes <= size, InputError,
             "{}.weight: {} non-zeros in {} weights, {} position bytes of {}", node.name, nnz,
             numel, pos_bytes, size);
    // Gap codes make trailing zeros free, so the file's size does not bound the weight's: cap it
    // (the largest layers of ImageNet models have ~10^8 weights) before allocating.
    PF_CHECK(numel <= (int64_t{1} << 31), InputError,
             "{}.weight: {} weights is more than a layer can have", node.name, numel);
    const auto kind = meta.at("values").get<std::string>();
    const size_t value_size = size - pos_bytes;
    PF_CHECK(kind == "float" ? value_size == static_cast<size_t>(nnz) * sizeof(float)
                             : static_cast<int64_t>(value_size) >= 2 + ceil_div(nnz, 8),
             InputError, "{}.weight: {} value bytes cannot hold {} values", node.name, value_size,
             nnz);
    std::vector<int64_t> pos;
    pos.reserve(static_cast<size_t>(nnz));
    if (where == "dense") {
        PF_CHECK(nnz == numel && pos_bytes == 0, InputError,
                 "{}.weight: a dense weight must store all {} values", node.name, numel);
        pos.resize(static_cast<size_t>(numel));
        std::iota(pos.begin(), pos.end(), int64_t{0});
    } else if (where == "bitmap") {
        PF_CHECK(static_cast<int64_t>(pos_bytes) == ceil_div(numel, 8), InputError,
                 "{}.weight: its bitmap has {} bytes for {} weights", node.name, pos_bytes, numel);
        BitReader r(data, pos_bytes);
        for (int64_t i = 0; i < numel; ++i) {
            if (r.bit()) {
                pos.push_back(i);
            }
        }
    } else if (where == "gaps") {
        const int g = meta.at("gap_bits").get<int>();
        const auto count = meta.at("pos_symbols").get<int64_t>();
        PF_CHECK(g >= 1 && g <= 8 && count >= nnz && count <= numel && pos_bytes >= 2 &&
                     static_cast<uint8_t>(data[1]) == g,
                 InputError, "{}.weight: invalid gap coding ({} bits, {} symbols)", node.name, g,
                 count);
        std::vector<uint8_t> syms = decode_symbols(data, pos_bytes, count);
        const int64_t skip = (int64_t{1} << g) - 1;
        int64_t at_ = 0;
        for (uint8_t s : syms) {
            at_ += s == 0 ? skip : s - 1;
            if (s != 0) {
                PF_CHECK(at_ < numel, InputError, "{}.weight: a position lies past its {} weights",
                         node.name, numel);
                pos.push_back(at_++);
            }
        }
        PF_CHECK(syms.empty() || syms.back() != 0, InputError,
                 "{}.weight: its gap codes end without a weight", node.name);
    } else {
        throw InputError(fmt::format("{}.weight: unknown position coding '{}'", node.name, where));
    }
    PF_CHECK(static_cast<int64_t>(pos.size()) == nnz, InputError,
             "{}.weight: its positions give {} non-zeros, its header {}", node.name, pos.size(),
             nnz);
    at::Tensor index = at::from_blob(pos.data(), {nnz}, at::kLong).clone();
    const char* values = data + pos_bytes;
    at::Tensor weight = at::zeros({numel});
    at::Tensor ints;
    auto symbols = [&](int bits) {
        std::vector<uint8_t> s = decode_symbols(values, value_size, nnz);
        PF_CHECK(value_size >= 2 && static_cast<uint8_t>(values[1]) == bits, InputError,
                 "{}.weight: its values are not {}-bit symbols", node.name, bits);
        return at::from_blob(s.data(), {nnz}, at::kByte).to(at::kLong);
    };
    if (kind == "float") {
        PF_CHECK(value_size == static_cast<size_t>(nnz) * sizeof(float), InputError,
                 "{}.weight: {} value bytes for {} float32 values", node.name, value_size, nnz);
        at::Tensor v = at::empty({nnz});
        if (value_size > 0) {
            std::memcpy(v.data_ptr(), values, value_size);
        }
        weight.index_copy_(0, index, v);
    } else if (kind == "index") {
        PF_CHECK(has_codebook(node), InputError, "{}.weight: indices without a codebook",
                 node.name);
        const int64_t k = node.params.at("codebook").numel();
        const int bits = meta.at("value_bits").get<int>();
        PF_CHECK(bits >= 2 && bits <= 8 && (int64_t{1} << bits) == k, InputError,
                 "{}.weight: {}-bit indices for {} centroids", node.name, bits, k);
        at::Tensor idx = at::zeros({numel}, at::kLong);
        idx.index_copy_(0, index, symbols(bits));
        node.buffers["weight_index"] = idx.to(at::kByte).reshape(shape);
        weight = node.params.at("codebook").index_select(0, idx);
    } else if (kind == "ints") {
        const int bits = meta.at("value_bits").get<int>();
        PF_CHECK(bits >= 2 && bits <= 8 && bits == node.quant.weight_bits, InputError,
                 "{}.weight: {}-bit integers for a layer quantized at {} bits", node.name, bits,
                 node.quant.weight_bits);
        ints = at::zeros({numel}, at::kInt);
        ints.index_copy_(0, index, (symbols(bits) - (1 << (bits - 1))).to(at::kInt));
        ints = ints.reshape(shape);
    } else {
        throw InputError(fmt::format("{}.weight: unknown value coding '{}'", node.name, kind));
    }
    if (where != "dense" || meta.value("mask", false)) {
        at::Tensor mask = at::zeros({numel}, at::kBool);
        mask.index_fill_(0, index, true);
        node.buffers["weight_mask"] = mask.reshape(shape);
        weight = weight.masked_fill(mask.logical_not(), 0.0);
    }
    node.params["weight"] = weight.reshape(shape).contiguous();
    return ints;
}

WeightStorage weight_storage(const Node& node) {
    WeightStorage s;
    const at::Tensor& w = node.params.at("weight");
    s.dense_bytes = w.numel() * static_cast<int64_t>(sizeof(float));
    if (!has_weight_constraints(node)) {
        s.positions = "dense";
        s.values = node.quant.weight_bits > 0 ? "ints" : "float";
        s.value_bytes = node.quant.weight_bits > 0 ? packed_bytes(w.numel(), node.quant.weight_bits)
                                                   : s.dense_bytes;
        return s;
    }
    EncodedWeight e = encode_weight(node);
    s.position_bytes = e.meta.at("pos_bytes").get<int64_t>();
    s.value_bytes = static_cast<int64_t>(e.bytes.size()) - s.position_bytes;
    s.positions = e.meta.at("positions").get<std::string>();
    if (s.positions == "gaps") {
        s.positions += std::to_string(e.meta.at("gap_bits").get<int>());
        if (static_cast<uint8_t>(e.bytes[0]) == 1) {
            s.positions += "+huffman";
        }
    }
    s.values = e.meta.at("values").get<std::string>();
    if (s.values != "float" &&
        static_cast<uint8_t>(e.bytes[static_cast<size_t>(s.position_bytes)]) == 1) {
        s.values += "+huffman";
    }
    return s;
}

}  // namespace pocketflow
