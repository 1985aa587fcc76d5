// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Where and how layer latencies are measured.
struct LatencyOptions {
    std::string runtime = "onnxruntime";  ///< onnxruntime | libtorch
    int64_t batch = 16;
    int64_t threads = 0;  ///< 0: this process's LibTorch thread count
    int64_t repeat = 10;  ///< timed runs per entry (the median is kept)
};

/// A per-layer latency table (hardware in the loop, AMC / NetAdapt style): the time of each conv
/// and linear layer at one batch size in one runtime, keyed by the layer and its channel counts,
/// measured the first time a graph needs it — all missing entries of a graph in one runtime
/// process — and kept in a CSV file, so later runs and resumed searches reuse it. A graph's
/// predicted latency is the sum of its layers' entries, each less the time of a model of the
/// layer's input alone (the runtime's per-run overhead, which a one-layer model pays once per
/// layer and a whole model once): what changes when channels are removed (the other nodes are
/// cheap and fused into the layers by the runtimes).
///
/// Example:
///   LatencyTable table({"onnxruntime", 16}, run_dir / "search" / "latency_table.csv");
///   double ms = table.predict_ms(candidate_graph);
class LatencyTable {
public:
    LatencyTable(LatencyOptions options, std::string cache_path);

    /// The sum over `graph`'s conv and linear layers of their entries less their inputs'
    /// overhead entries (ms); measures the missing ones.
    double predict_ms(const Graph& graph);
    /// Entries in the table and how many this process measured.
    size_t size() const { return table_.size(); }
    size_t measured() const { return measured_; }
    const LatencyOptions& options() const { return options_; }

private:
    LatencyOptions options_;
    std::string cache_path_;
    std::string header_;
    std::map<std::string, double> table_;
    size_t measured_ = 0;

    void save() const;
};

}  // namespace pocketflow
