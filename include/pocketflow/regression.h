// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <map>
#include <string>
#include <vector>

namespace pocketflow {

/// The regression gate of `pocketflow check`: compares the numeric metrics of runs (a run
/// directory, its summary.json, a `{"runs": [{"name": ..., metric: value, ...}]}` table, or a
/// `pocketflow bench --json` output) against a baseline under per-metric limits.

/// Named entries (runs, or bench rows "model runtime b<batch>"), each with its numeric metrics.
using RunMetrics = std::map<std::string, std::map<std::string, double>>;

/// Reads a run directory (its summary.json), a summary.json, a `{"runs": [...]}` table (entries
/// need a "name") or a bench result (`{"results": [...]}`); top-level numbers are the metrics.
/// InputError naming the file when it is missing or has none of these shapes.
RunMetrics load_run_metrics(const std::string& path);

/// A limit on one metric: the result may fall at most `value` below the baseline (kDrop, e.g.
/// top1 points), rise at most `value` above it (kRise, e.g. loss), or be at most `value` times it
/// (kRatio, e.g. latency or bytes).
struct MetricLimit {
    enum Kind { kDrop, kRise, kRatio };
    std::string metric;
    Kind kind = kDrop;
    double value = 0;
};

/// Parses "metric=value" for a limit kind; ConfigError naming `option` otherwise.
MetricLimit parse_metric_limit(const std::string& text,
                               MetricLimit::Kind kind,
                               const std::string& option);

/// One compared metric of one entry.
struct RegressionRow {
    std::string entry, metric, limit;
    double baseline = 0, result = 0;
    bool regressed = false;
};

/// The limits a baseline file states for itself (`"limits": {"max_drop": {"top1": 0.3},
/// "max_ratio": {"macs": 1.0}, "max_rise": {...}}`, beside "runs"); empty when it states none.
/// InputError naming the file and key on a malformed entry.
std::vector<MetricLimit> load_baseline_limits(const std::string& path);

/// Writes `results` as a baseline file (`{"source": ..., "limits": {...}, "runs": [{"name": ...,
/// metric: value}]}`, atomically): how a suite's committed baseline is made from a measured run.
/// InputError when a run failed (a baseline holds finished runs only).
void write_baseline(const RunMetrics& results,
                    const std::vector<MetricLimit>& limits,
                    const std::string& source,
                    const std::string& path);

/// Compares every entry of `results` with the baseline entry of the same name (a single entry on
/// each side is compared whatever the names) under every limit. A baseline entry missing from the
/// results and a failed sweep run (status not "ok") are regressions. A limit applies to the
/// entries whose baseline has the metric. ConfigError when an entry has no baseline, a limited
/// metric of the baseline is missing from the results, or no baseline entry has a limited metric.
std::vector<RegressionRow> check_regressions(const RunMetrics& baseline,
                                             const RunMetrics& results,
                                             const std::vector<MetricLimit>& limits);

}  // namespace pocketflow
