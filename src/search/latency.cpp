// SPDX-License-Identifier: Apache-2.0
// Per-layer latency tables for searches with a latency reward.
#include "pocketflow/latency.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/onnx.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

bool timed(const Node& n) {
    return n.op == Op::kConv2d || n.op == Op::kLinear;
}

/// The table key of a layer: its name and everything its time depends on.
std::string layer_key(const Node& n, const std::vector<int64_t>& in_shape) {
    const at::Tensor& w = n.params.at("weight");
    if (n.op == Op::kLinear) {
        return fmt::format("{} linear {}->{}", n.name, w.size(1), w.size(0));
    }
    const Attrs& a = n.attrs;
    return fmt::format("{} conv {}x{}x{}->{} k{}x{} s{}x{} g{}", n.name, in_shape.at(0),
                       in_shape.at(1), in_shape.at(2), w.size(0), a.kernel.at(0), a.kernel.at(1),
                       a.stride.at(0), a.stride.at(1), a.groups);
}

/// The table key of a one-layer model's overhead on an input of `in_shape`.
std::string overhead_key(const std::vector<int64_t>& in_shape) {
    return fmt::format("overhead {}", fmt::join(in_shape, "x"));
}

/// A graph of the layer alone (a float copy of it on its input), flattened for conv layers so that
/// it has the [N, features] output every exported model has.
/// Graph inputs are images: a linear layer's [F] input comes as [F, 1, 1] through a Flatten.
std::vector<int64_t> image_shape(std::vector<int64_t> shape) {
    shape.resize(3, 1);
    return shape;
}

Graph single_layer(const Node& n, const std::vector<int64_t>& in_shape) {
    Graph g(image_shape(in_shape));
    Node copy = n;
    copy.inputs = {in_shape.size() == 3 ? g.input()
                                        : g.add_unary(n.name + "_in", Op::kFlatten, g.input())};
    copy.quant = QuantSpec{};
    copy.buffers.clear();
    const int id = g.add(std::move(copy));
    if (n.op == Op::kConv2d) {
        g.add_unary(n.name + "_flat", Op::kFlatten, id);
    }
    return g;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

LatencyTable::LatencyTable(LatencyOptions options, std::string cache_path)
    : options_(std::move(options)), cache_path_(std::move(cache_path)) {
    PF_CHECK(options_.runtime == "onnxruntime" || options_.runtime == "libtorch", Error,
             "latency runtime '{}' is not onnxruntime or libtorch", options_.runtime);
    if (options_.threads <= 0) {
        options_.threads = at::get_num_threads();
    }
    header_ = fmt::format("# layer latency (ms), runtime {}, batch {}, {} threads",
                          options_.runtime, options_.batch, options_.threads);
    std::ifstream in(cache_path_);
    std::string line;
    if (!in || !std::getline(in, line) || line != header_) {
        return;  // none yet, or measured another way: start over
    }
    while (std::getline(in, line)) {
        const size_t tab = line.rfind('\t');
        if (tab == std::string::npos) {
            continue;
        }
        table_[line.substr(0, tab)] = std::stod(line.substr(tab + 1));
    }
}

void LatencyTable::save() const {
    if (cache_path_.empty()) {
        return;
    }
    std::string text = header_ + "\n";
    for (const auto& [key, ms] : table_) {
        text += fmt::format("{}\t{}\n", key, ms);
    }
    write_file_atomic(cache_path_, text);
}

double LatencyTable::predict_ms(const Graph& graph) {
    const auto shapes = graph.infer_shapes();
    std::vector<std::string> missing;
    std::vector<Graph> layers;
    std::vector<std::vector<int64_t>> inputs;
    auto add_missing = [&](const std::string& key, Graph g, const std::vector<int64_t>& in_shape) {
        if (table_.count(key) || std::find(missing.begin(), missing.end(), key) != missing.end()) {
            return;
        }
        missing.push_back(key);
        layers.push_back(std::move(g));
        std::vector<int64_t> x{options_.batch};
        for (int64_t d : image_shape(in_shape)) {
            x.push_back(d);
        }
        inputs.push_back(std::move(x));
    };
    for (const Node& n : graph.nodes()) {
        if (!timed(n)) {
            continue;
        }
        const auto& in_shape = shapes.at(static_cast<size_t>(n.inputs.at(0)));
        add_missing(layer_key(n, in_shape), single_layer(n, in_shape), in_shape);
        // What a one-layer model costs besides its layer (the runtime's per-run work, copying
        // the input in, the output out), timed on a model of its input alone and subtracted.
        Graph empty(image_shape(in_shape));
        empty.add_unary("flatten", Op::kFlatten, empty.input());
        add_missing(overhead_key(in_shape), std::move(empty), in_shape);
    }
    if (!missing.empty()) {
        std::vector<double> ms;
        if (options_.runtime == "onnxruntime") {
            ScopedTempDir scratch("pocketflow-latency");
            std::vector<std::string> paths;
            for (size_t i = 0; i < layers.size(); ++i) {
                paths.push_back((scratch.path() / fmt::format("layer{}.onnx", i)).string());
                export_onnx(paths.back(), layers[i], ModelMeta{});
            }
            for (const OrtRun& r :
                 time_onnxruntime(paths, inputs, 2, options_.repeat, options_.threads, 5)) {
                ms.push_back(r.median_ms);
            }
        } else {
            const int threads = at::get_num_threads();
            at::set_num_threads(static_cast<int>(options_.threads));
            for (size_t i = 0; i < layers.size(); ++i) {
                Model m(std::move(layers[i]), ModelMeta{});
                m.eval();
                const at::Tensor x = at::full(inputs[i], 0.5);  // values do not change the time
                ms.push_back(median(time_forward({&m}, x, 2, options_.repeat).front()));
            }
            at::set_num_threads(threads);
        }
        for (size_t i = 0; i < missing.size(); ++i) {
            table_[missing[i]] = ms[i];
        }
        measured_ += missing.size();
        save();
    }
    double total = 0;
    for (const Node& n : graph.nodes()) {
        if (timed(n)) {
            const auto& in_shape = shapes.at(static_cast<size_t>(n.inputs.at(0)));
            total += std::max(
                0.0, table_.at(layer_key(n, in_shape)) - table_.at(overhead_key(in_shape)));
        }
    }
    return total;
}

}  // namespace pocketflow
