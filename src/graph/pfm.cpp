// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/pfm.h"

#include <cstring>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

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

json attrs_to_json(const Attrs& a) {
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

Attrs attrs_from_json(const json& j) {
    Attrs a;
    a.kernel = j.at("kernel").get<std::vector<int64_t>>();
    a.stride = j.at("stride").get<std::vector<int64_t>>();
    a.padding = j.at("padding").get<std::vector<int64_t>>();
    a.dilation = j.at("dilation").get<std::vector<int64_t>>();
    a.groups = j.at("groups").get<int64_t>();
    a.out_channels = j.at("out_channels").get<int64_t>();
    a.ceil_mode = j.at("ceil_mode").get<bool>();
    a.count_include_pad = j.at("count_include_pad").get<bool>();
    a.min = j.at("min").get<double>();
    a.max = j.at("max").get<double>();
    // Added after the first files were written: optional, with the IR's defaults.
    a.alpha = j.value("alpha", a.alpha);
    a.beta = j.value("beta", a.beta);
    a.eps = j.at("eps").get<double>();
    a.momentum = j.at("momentum").get<double>();
    a.p = j.at("p").get<double>();
    a.axis = j.at("axis").get<int64_t>();
    a.shape = j.at("shape").get<std::vector<int64_t>>();
    return a;
}
}  // namespace

void save_model(const std::string& path, const Graph& graph, const ModelMeta& meta) {
    graph.validate();
    std::string data;
    json nodes = json::array();
    for (const Node& n : graph.nodes()) {
        json jn = {{"name", n.name},
                   {"op", op_name(n.op)},
                   {"inputs", n.inputs},
                   {"attrs", attrs_to_json(n.attrs)}};
        for (const auto& [group_name, group] :
             {std::pair<const char*, const std::map<std::string, at::Tensor>*>{"params", &n.params},
              {"buffers", &n.buffers}}) {
            json tensors = json::array();
            for (const auto& [key, t] : *group) {
                at::Tensor c = t.detach().to(at::kFloat).contiguous();
                tensors.push_back({{"key", key},
                                   {"shape", c.sizes().vec()},
                                   {"offset", data.size()},
                                   {"numel", c.numel()}});
                data.append(static_cast<const char*>(c.data_ptr()),
                            static_cast<size_t>(c.numel()) * sizeof(float));
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
    std::string header_text = header.dump();
    std::string out;
    out.reserve(kPrefix + header_text.size() + data.size() + 4);
    out.append(kMagic, sizeof(kMagic));
    put<uint32_t>(out, static_cast<uint32_t>(kPfmFormatVersion));
    put<uint64_t>(out, header_text.size());
    out += header_text;
    out += data;
    put<uint32_t>(out, crc32_update(0, out.data(), out.size()));
    write_file_atomic(path, out);
}

ModelFile load_model(const std::string& path) {
    std::string in = read_file(path);
    auto bad = [&](const std::string& why) {
        return InputError(fmt::format("failed to load model {}: {}", path, why));
    };
    if (in.size() < kPrefix + 4 || std::memcmp(in.data(), kMagic, sizeof(kMagic)) != 0) {
        throw bad(in.size() < kPrefix + 4 ? "file too short to be a .pfm model"
                                          : "not a .pfm model (bad magic)");
    }
    auto version = get<uint32_t>(in, sizeof(kMagic));
    if (version != static_cast<uint32_t>(kPfmFormatVersion)) {
        throw bad(fmt::format("format version {} is not supported (this build reads {})", version,
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
        json header = json::parse(in.begin() + static_cast<std::ptrdiff_t>(kPrefix),
                                  in.begin() + static_cast<std::ptrdiff_t>(data_begin));
        const json& jm = header.at("meta");
        file.meta.arch = jm.at("arch").get<std::string>();
        file.meta.dataset = jm.at("dataset").get<std::string>();
        file.meta.mean = jm.at("mean").get<std::vector<double>>();
        file.meta.std = jm.at("std").get<std::vector<double>>();
        Graph g(header.at("input_shape").get<std::vector<int64_t>>());
        const json& nodes = header.at("nodes");
        if (!nodes.is_array() || nodes.empty() || nodes[0].at("op") != "Input") {
            throw bad("the first node must be the input");
        }
        for (size_t i = 1; i < nodes.size(); ++i) {
            const json& jn = nodes[i];
            Node n;
            n.name = jn.at("name").get<std::string>();
            n.op = op_from_name(jn.at("op").get<std::string>());
            n.inputs = jn.at("inputs").get<std::vector<int>>();
            n.attrs = attrs_from_json(jn.at("attrs"));
            for (const char* group_name : {"params", "buffers"}) {
                auto& group = std::string(group_name) == "params" ? n.params : n.buffers;
                for (const json& jt : jn.at(group_name)) {
                    auto shape = jt.at("shape").get<std::vector<int64_t>>();
                    auto offset = jt.at("offset").get<uint64_t>();
                    auto count = jt.at("numel").get<int64_t>();
                    int64_t expect = 1;
                    for (int64_t d : shape) {
                        if (d < 0 || d > (int64_t{1} << 40)) {
                            throw bad(fmt::format("tensor {}.{} has an invalid shape", n.name,
                                                  jt.at("key").get<std::string>()));
                        }
                        expect *= d;
                    }
                    if (count != expect || offset > data_size ||
                        static_cast<uint64_t>(count) * sizeof(float) > data_size - offset) {
                        throw bad(fmt::format("tensor {}.{} lies outside the data section", n.name,
                                              jt.at("key").get<std::string>()));
                    }
                    at::Tensor t = at::empty(shape, at::kFloat);
                    std::memcpy(t.data_ptr(), in.data() + data_begin + offset,
                                static_cast<size_t>(count) * sizeof(float));
                    group[jt.at("key").get<std::string>()] = t;
                }
            }
            g.add(std::move(n));
        }
        g.set_output(header.at("output").get<int>());
        g.validate();
        file.graph = std::move(g);
    } catch (const json::exception& e) {
        throw bad(fmt::format("malformed header: {}", e.what()));
    } catch (const Error& e) {
        if (std::string(e.what()).rfind("failed to load model", 0) == 0) {
            throw;
        }
        throw bad(e.what());
    }
    return file;
}

}  // namespace pocketflow
