// SPDX-License-Identifier: Apache-2.0
// A model described layer by layer (info --json, report) and the Pareto front of runs.
#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>

#include "pocketflow/graph.h"
#include "pocketflow/quant.h"
#include "pocketflow/report.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/weight_codec.h"

namespace pocketflow {

using nlohmann::json;

json describe_model(const Graph& graph) {
    const auto stats = graph.layer_stats();
    const auto& nodes = graph.nodes();
    const std::vector<int> act_source = quantized_values(graph);
    json layers = json::array();
    int64_t weight_bytes = 0;
    for (size_t i = 0; i < stats.size(); ++i) {
        const auto& s = stats[i];
        const Node& n = nodes[i];
        json row = {{"name", s.name},     {"op", op_name(s.op)}, {"shape", s.out_shape},
                    {"params", s.params}, {"macs", s.macs},      {"bytes", node_bytes(n)}};
        weight_bytes += row["bytes"].get<int64_t>();
        const auto w = n.params.find("weight");
        if (w != n.params.end() && w->second.dim() >= 2) {
            row["weight_shape"] = w->second.sizes().vec();
        }
        const QuantSpec& q = n.quant;
        if (q.weight_bits > 0) {
            const at::Tensor& ws = n.buffers.at("weight_scale");
            row["weight_bits"] = q.weight_bits;
            row["weight_range"] = q.weight_qmax;
            row["weight_scale"] = {ws.min().item<double>(), ws.max().item<double>()};
        }
        if (has_weight_constraints(n)) {
            const WeightStorage st = weight_storage(n);
            row["sparsity"] = count_sparsity(n).sparsity();
            row["storage"] = {{"positions", st.positions},
                              {"values", st.values},
                              {"position_bytes", st.position_bytes},
                              {"value_bytes", st.value_bytes},
                              {"float_bytes", st.dense_bytes}};
            if (has_codebook(n)) {
                row["codebook_bits"] = static_cast<int>(std::log2(n.params.at("codebook").numel()));
            }
        }
        if (q.act_bits > 0) {
            const ActParams p = act_params(n);
            row["act_bits"] = q.act_bits;
            row["act_scale"] = p.scale;
            row["act_zero_point"] = p.zero_point;
        } else if (act_source[i] >= 0) {
            row["act_from"] = nodes[static_cast<size_t>(act_source[i])].name;
        }
        layers.push_back(std::move(row));
    }
    // Compression: the stored bytes against the same graph with float32 dense weights.
    const bool quantized = is_quantized(graph);
    bool compressed = quantized;
    int64_t float_bytes = 0;
    for (const auto& n : nodes) {
        compressed = compressed || has_weight_constraints(n);
        for (const auto* group : {&n.params, &n.buffers}) {
            for (const auto& [key, t] : *group) {
                const bool state = key == "weight_mask" || key == "weight_index" ||
                                   key == "codebook" || key == "weight_scale";
                float_bytes += state ? 0 : t.numel() * 4;
            }
        }
    }
    return {{"params", graph.total_params()},
            {"macs", graph.total_macs()},
            {"weight_bytes", weight_bytes},
            {"float_bytes", float_bytes},
            {"compression", static_cast<double>(float_bytes) /
                                static_cast<double>(std::max<int64_t>(1, weight_bytes))},
            {"compressed", compressed},
            {"sparsity", count_sparsity(graph).sparsity()},
            {"quantized", quantized},
            {"input", graph.input_shape()},
            {"layers", std::move(layers)}};
}

std::vector<size_t> pareto_front(const std::vector<std::pair<double, double>>& cost_accuracy) {
    std::vector<size_t> order(cost_accuracy.size());
    for (size_t i = 0; i < order.size(); ++i) {
        order[i] = i;
    }
    // Cheapest first, the more accurate first among equal costs: a point is on the front when it
    // is more accurate than every cheaper (or equally cheap, earlier) point.
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        const auto& pa = cost_accuracy[a];
        const auto& pb = cost_accuracy[b];
        return pa.first != pb.first ? pa.first < pb.first : pa.second > pb.second;
    });
    std::vector<size_t> front;
    double best = -INFINITY;
    for (size_t i : order) {
        const auto& [cost, acc] = cost_accuracy[i];
        if (std::isfinite(cost) && std::isfinite(acc) && acc > best) {
            front.push_back(i);
            best = acc;
        }
    }
    return front;
}

}  // namespace pocketflow
