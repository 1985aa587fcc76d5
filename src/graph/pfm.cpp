// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/pfm.h"

#include <cstring>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/quant.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"
#include "pocketflow/weight_codec.h"

namespace pocketflow {

using nlohmann::json;

namespace {
constexpr char kMagic[8] = {'P', 'F', 'M', 'O', 'D', 'E', 'L', '\0'};
constexpr size_t kPrefix = sizeof(kMagic) + sizeof(uint32_t) + sizeof(uint64_t);

template <typename T>
void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof(T));
}

template <typename T>
T get(const std::string& in, size_t offset) {
    T value;
    std::memcpy(&value, in.data() + offset, sizeof(T));
    return value;
}

/// Only the attributes that differ from the IR's defaults (the reader fills in the rest).
json attrs_to_json_full(const Attrs& a);

json attrs_to_json(const Attrs& a) {
    json all = attrs_to_json_full(a);
    json defaults = attrs_to_json_full(Attrs{});
    json out = json::object();
    for (auto& [key, value] : all.items()) {
        if (value != defaults.at(key)) {
            out[key] = value;
        }
    }
    return out;
}

json attrs_to_json_full(const Attrs& a) {
    return {{"kernel", a.kernel},
            {"stride", a.stride},
            {"padding", a.padding},
            {"dilation", a.dilation},
            {"groups", a.groups},
            {"out_channels", a.out_channels},
            {"ceil_mode", a.ceil_mode},
            {"count_include_pad", a.count_include_pad},
            {"min", a.min},
            {"alpha", a.alpha},
            {"beta", a.beta},
            {"max", a.max},
            {"eps", a.eps},
            {"momentum", a.momentum},
            {"p", a.p},
            {"axis", a.axis},
            {"shape", a.shape}};
}

/// Version 1 files list every attribute; version 2 only those off the defaults.
Attrs attrs_from_json(const JsonReader& j) {
    Attrs a;
    auto read = [&](const char* key, auto& field) {
        if (j.has(key)) {
            field = j.at(key).get<std::decay_t<decltype(field)>>();
        }
    };
    read("kernel", a.kernel);
    read("stride", a.stride);
    read("padding", a.padding);
    read("dilation", a.dilation);
    read("groups", a.groups);
    read("out_channels", a.out_channels);
    read("ceil_mode", a.ceil_mode);
    read("count_include_pad", a.count_include_pad);
    read("min", a.min);
    read("max", a.max);
    read("alpha", a.alpha);
    read("beta", a.beta);
    read("eps", a.eps);
    read("momentum", a.momentum);
    read("p", a.p);
    read("axis", a.axis);
    read("shape", a.shape);
    return a;
}
}  // namespace

std::string encode_model(const Graph& graph, const ModelMeta& meta) {
    graph.validate();
    std::string data;
    json nodes = json::array();
    for (const Node& n : graph.nodes()) {
        json jn = {{"name", n.name},
                   {"op", op_name(n.op)},
                   {"inputs", n.inputs},
                   {"attrs", attrs_to_json(n.attrs)}};
        if (n.quant.any()) {
            jn["quant"] = {{"weight_bits", n.quant.weight_bits},
                           {"weight_qmax", n.quant.weight_qmax},
                           {"act_bits", n.quant.act_bits}};
        }
        for (const auto& [group_name, group] :
             {std::pair<const char*, const std::map<std::string, at::Tensor>*>{"params", &n.params},
              {"buffers", &n.buffers}}) {
            json tensors = json::array();
            const bool coded = has_weight_constraints(n);
            for (const auto& [key, t] : *group) {
                if (coded && (key == "weight_mask" || key == "weight_index")) {
                    continue;  // part of the weight's encoding
                }
                json jt = {{"key", key},
                           {"shape", t.sizes().vec()},
                           {"offset", data.size()},
                           {"numel", t.numel()}};
                if (key == "weight" && coded) {
                    // Sparse and/or codebook weights: positions and values (weight_codec.h).
                    EncodedWeight e = encode_weight(n);
                    jt["enc"] = std::move(e.meta);
                    data += e.bytes;
                } else if (key == "weight" && n.quant.weight_bits > 0) {
                    // Quantized weights: their integers, packed (the scales are a buffer).
                    jt["bits"] = n.quant.weight_bits;
                    data += pack_ints(weight_ints(n), n.quant.weight_bits);
                } else {
                    at::Tensor c = t.detach().to(at::kFloat).contiguous();
                    data.append(static_cast<const char*>(c.data_ptr()),
                                static_cast<size_t>(c.numel()) * sizeof(float));
                }
                tensors.push_back(std::move(jt));
            }
            jn[group_name] = std::move(tensors);
        }
        nodes.push_back(std::move(jn));
    }
    json header = {
        {"format_version", kPfmFormatVersion},
        {"input_shape", graph.input_shape()},
        {"output", graph.output()},
        {"meta",
         {{"arch", meta.arch}, {"dataset", meta.dataset}, {"mean", meta.mean}, {"std", meta.std}}},
        {"nodes", std::move(nodes)}};
    // Version 2: the header is deflated (u64 inflated length, then zlib data): a quantized
    // ResNet-20's JSON is ~5% of its int8 weights.
    const std::string header_json = json_text(header);
    uLongf packed = compressBound(header_json.size());
    std::string header_text(sizeof(uint64_t) + packed, '\0');
    const uint64_t raw_len = header_json.size();
    std::memcpy(header_text.data(), &raw_len, sizeof(raw_len));
    PF_CHECK(compress2(reinterpret_cast<Bytef*>(header_text.data() + sizeof(uint64_t)), &packed,
                       reinterpret_cast<const Bytef*>(header_json.data()), header_json.size(),
                       Z_BEST_COMPRESSION) == Z_OK,
             Error, "failed to compress the header of model {}", meta.arch);
    header_text.resize(sizeof(uint64_t) + packed);
    std::string out;
    out.reserve(kPrefix + header_text.size() + data.size() + 4);
    out.append(kMagic, sizeof(kMagic));
    put<uint32_t>(out, static_cast<uint32_t>(kPfmFormatVersion));
    put<uint64_t>(out, header_text.size());
    out += header_text;
    out += data;
    put<uint32_t>(out, crc32_update(0, out.data(), out.size()));
    return out;
}

void save_model(const std::string& path, const Graph& graph, const ModelMeta& meta) {
    write_file_atomic(path, encode_model(graph, meta));
}

ModelFile load_model(const std::string& path) {
    return decode_model(read_file(path), path);
}

ModelFile decode_model(const std::string& in, const std::string& path) {
    auto bad = [&](const std::string& why) {
        return InputError(fmt::format("failed to load model {}: {}", path, why));
    };
    if (in.size() < kPrefix + 4 || std::memcmp(in.data(), kMagic, sizeof(kMagic)) != 0) {
        throw bad(in.size() < kPrefix + 4 ? "file too short to be a .pfm model"
                                          : "not a .pfm model (bad magic)");
    }
    auto version = get<uint32_t>(in, sizeof(kMagic));
    if (version < 1 || version > static_cast<uint32_t>(kPfmFormatVersion)) {
        throw bad(fmt::format("format version {} is not supported (this build reads 1–{})", version,
                              kPfmFormatVersion));
    }
    auto header_len = get<uint64_t>(in, sizeof(kMagic) + sizeof(uint32_t));
    if (header_len > in.size() - kPrefix - 4) {
        throw bad("truncated (header runs past the end of the file)");
    }
    uint32_t stored_crc = get<uint32_t>(in, in.size() - 4);
    if (crc32_update(0, in.data(), in.size() - 4) != stored_crc) {
        throw bad("checksum mismatch: the file is truncated or corrupted");
    }
    size_t data_begin = kPrefix + header_len;
    size_t data_size = in.size() - 4 - data_begin;
    ModelFile file;
    try {
        std::string text = in.substr(kPrefix, header_len);
        if (version >= 2) {
            uint64_t raw_len = 0;
            if (text.size() < sizeof(raw_len)) {
                throw bad("truncated header");
            }
            std::memcpy(&raw_len, text.data(), sizeof(raw_len));
            // Checked before allocating: deflate expands at most ~1032:1.
            const uint64_t packed = text.size() - sizeof(raw_len);
            if (raw_len > (uint64_t{1} << 30) || raw_len > packed * 1032 + 64) {
                throw bad(
                    fmt::format("the header declares {} bytes, more than its {} compressed "
                                "bytes can hold",
                                raw_len, packed));
            }
            std::string raw(raw_len, '\0');
            uLongf got = raw_len;
            if (uncompress(reinterpret_cast<Bytef*>(raw.data()), &got,
                           reinterpret_cast<const Bytef*>(text.data() + sizeof(raw_len)),
                           text.size() - sizeof(raw_len)) != Z_OK ||
                got != raw_len) {
                throw bad("the header does not inflate");
            }
            text = std::move(raw);
        }
        const std::string context = fmt::format("failed to load model {}: header", path);
        const json header_json = parse_json_text(text, context);
        const JsonReader header(header_json, context);
        const JsonReader jm = header.at("meta");
        file.meta.arch = jm.at("arch").get<std::string>();
        file.meta.dataset = jm.at("dataset").get<std::string>();
        file.meta.mean = jm.at("mean").get<std::vector<double>>();
        file.meta.std = jm.at("std").get<std::vector<double>>();
        const auto input_shape = header.at("input_shape").get<std::vector<int64_t>>();
        if (input_shape.size() != 3) {
            throw header.at("input_shape").fail("expected [C, H, W]");
        }
        if (const std::string why = normalisation_problem(file.meta, input_shape[0]);
            !why.empty()) {
            throw jm.fail(why);
        }
        Graph g(input_shape);
        const JsonReader nodes = header.at("nodes");
        if (nodes.size() == 0 || nodes.at(0).at("op").get<std::string>() != "Input") {
            throw nodes.fail("the first node must be the input");
        }
        for (size_t i = 0; i < nodes.size(); ++i) {
            const JsonReader jn = nodes.at(i);
            Node n;
            n.name = jn.at("name").get<std::string>();
            const std::string op = jn.at("op").get<std::string>();
            try {
                n.op = op_from_name(op);
            } catch (const Error&) {
                throw jn.at("op").fail(fmt::format("unknown operator \"{}\"", op));
            }
            n.inputs = jn.at("inputs").get<std::vector<int>>();
            n.attrs = attrs_from_json(jn.at("attrs"));
            if (jn.has("quant")) {
                const JsonReader jq = jn.at("quant");
                n.quant.weight_bits = jq.at("weight_bits").get<int>();
                n.quant.weight_qmax = jq.at("weight_qmax").get<int>();
                n.quant.act_bits = jq.at("act_bits").get<int>();
            }
            at::Tensor packed_weight;  // integers, scaled once the scales are read
            int packed_bits = 0;
            const json* coded_meta = nullptr;  // a weight_codec weight, decoded at the end
            const char* coded_data = nullptr;
            std::vector<int64_t> coded_shape;
            for (const char* group_name : {"params", "buffers"}) {
                auto& group = std::string(group_name) == "params" ? n.params : n.buffers;
                const JsonReader tensors = jn.at(group_name);
                for (size_t t_index = 0; t_index < tensors.size(); ++t_index) {
                    const JsonReader jt = tensors.at(t_index);
                    const std::string key = jt.at("key").get<std::string>();
                    auto shape = jt.at("shape").get<std::vector<int64_t>>();
                    auto offset = jt.at("offset").get<uint64_t>();
                    auto count = jt.at("numel").get<int64_t>();
                    int64_t expect = 1;
                    for (int64_t d : shape) {
                        // At most 2^40 elements in all (and no overflow on the way there).
                        if (d < 0 || d > (int64_t{1} << 40) ||
                            (d > 0 && expect > (int64_t{1} << 40) / d)) {
                            throw bad(
                                fmt::format("tensor {}.{} has an invalid shape", n.name, key));
                        }
                        expect *= d;
                    }
                    if (jt.has("enc")) {
                        const json& enc = jt.at("enc").raw();
                        const auto bytes = jt.at("enc").at("bytes").get<uint64_t>();
                        if (key != "weight" || offset > data_size || bytes > data_size - offset ||
                            count != expect) {
                            throw bad(
                                fmt::format("compressed tensor {}.{} lies outside the data "
                                            "section",
                                            n.name, key));
                        }
                        coded_meta = &enc;
                        coded_data = in.data() + data_begin + offset;
                        coded_shape = shape;
                        continue;
                    }
                    const int bits = jt.has("bits") ? jt.at("bits").get<int>() : 0;
                    if (bits != 0 &&
                        (bits < 2 || bits > 8 || bits != n.quant.weight_bits || key != "weight")) {
                        throw bad(fmt::format("tensor {}.{} has an invalid bit width {}", n.name,
                                              key, bits));
                    }
                    const uint64_t bytes = bits != 0
                                               ? static_cast<uint64_t>(packed_bytes(count, bits))
                                               : static_cast<uint64_t>(count) * sizeof(float);
                    if (count != expect || offset > data_size || bytes > data_size - offset) {
                        throw bad(
                            fmt::format("tensor {}.{} lies outside the data section", n.name, key));
                    }
                    const char* src = in.data() + data_begin + offset;
                    at::Tensor t;
                    if (bits != 0) {
                        t = unpack_ints(src, bytes, count, bits).reshape(shape);
                        packed_weight = t;
                        packed_bits = bits;
                    } else {
                        t = at::empty(shape, at::kFloat);
                        if (count > 0) {  // (an empty tensor has no data pointer)
                            std::memcpy(t.data_ptr(), src,
                                        static_cast<size_t>(count) * sizeof(float));
                        }
                    }
                    group[key] = t;
                }
            }
            if (coded_meta != nullptr) {
                at::Tensor ints = decode_weight(n, coded_shape, *coded_meta, coded_data,
                                                coded_meta->at("bytes").get<uint64_t>());
                if (ints.defined()) {
                    packed_weight = ints;
                    packed_bits = n.quant.weight_bits;
                }
            }
            if (packed_bits != 0) {
                // w = s · q, as the quantized model computes it (quantized_weight gives it back).
                auto it = n.buffers.find("weight_scale");
                const int64_t rank = n.op == Op::kConv2d ? 4 : n.op == Op::kLinear ? 2 : -1;
                if (packed_weight.dim() != rank) {
                    throw bad(fmt::format(
                        "quantized weight {}.weight has shape [{}]; a {} needs "
                        "{} dimensions",
                        n.name, fmt::join(packed_weight.sizes().vec(), ", "), op_name(n.op), rank));
                }
                if (it == n.buffers.end() ||
                    (it->second.numel() != 1 && it->second.numel() != packed_weight.size(0))) {
                    throw bad(
                        fmt::format("quantized weight {}.weight has no matching scales", n.name));
                }
                if (packed_weight.numel() > 0 &&
                    packed_weight.abs().max().item<int>() > n.quant.weight_qmax) {
                    throw bad(fmt::format("quantized weight {}.weight exceeds its range ±{}",
                                          n.name, n.quant.weight_qmax));
                }
                std::vector<int64_t> bshape(static_cast<size_t>(packed_weight.dim()), 1);
                bshape[0] = -1;
                n.params["weight"] = packed_weight.to(at::kFloat) * it->second.reshape(bshape);
            }
            if (i == 0) {
                // The input node exists already; it carries only a quantized input's range.
                if (n.op != Op::kInput || !n.inputs.empty() || !n.params.empty()) {
                    throw bad("the first node must be the input");
                }
                g.nodes()[0].quant = n.quant;
                g.nodes()[0].buffers = std::move(n.buffers);
                continue;
            }
            g.add(std::move(n));
        }
        g.set_output(header.at("output").get<int>());
        g.validate();
        file.graph = std::move(g);
    } catch (const json::exception& e) {  // (the compressed weights' records)
        throw bad(fmt::format("malformed header: {}", json_error_text(e)));
    } catch (const c10::Error& e) {
        throw bad(e.what_without_backtrace());
    } catch (const Error& e) {
        if (std::string(e.what()).rfind("failed to load model", 0) == 0) {
            throw;
        }
        throw bad(e.what());
    }
    return file;
}

}  // namespace pocketflow
