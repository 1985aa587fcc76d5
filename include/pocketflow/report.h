// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace pocketflow {

class Graph;

/// A model's structure and compression state, layer by layer, as `pocketflow info --json` prints
/// it: params, MACs, stored bytes, float32 bytes, compression, sparsity, and per layer name, op,
/// output shape, weight shape (conv/linear), params, MACs, bytes, weight/activation bits and
/// scales, sparsity and storage, codebook bits.
nlohmann::json describe_model(const Graph& graph);

/// Indices of the Pareto-optimal points among (cost, accuracy) pairs: no other point has lower or
/// equal cost and higher or equal accuracy with one of them strictly better. Sorted by cost.
std::vector<size_t> pareto_front(const std::vector<std::pair<double, double>>& cost_accuracy);

/// Everything `pocketflow report` shows, gathered from run directories and sweep directories (a
/// directory with results.json: its runs, with latency and failures). Per run: summary, resolved
/// config text, training curves (metrics.jsonl, grouped by stage), per-layer description of the
/// model before compression and of the final model, search episodes. InputError naming the path
/// when an input is neither a run nor a sweep directory.
nlohmann::json collect_report(const std::vector<std::string>& inputs);

/// The self-contained HTML page: `data` (collect_report) and the Chart.js source inlined, so it
/// opens offline.
std::string render_report(const nlohmann::json& data,
                          const std::string& chartjs_source,
                          const std::string& title);

/// The Chart.js UMD bundle: `path` when given, else $POCKETFLOW_CHARTJS, else Debian's
/// libjs-chart.js. InputError saying what to install when none is found.
std::string find_chartjs(const std::string& path);

}  // namespace pocketflow
