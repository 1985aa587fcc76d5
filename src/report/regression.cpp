// SPDX-License-Identifier: Apache-2.0
// `pocketflow check`: metrics of runs against a baseline, under per-metric limits.
#include "pocketflow/regression.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// The numeric fields of an entry; a sweep entry whose status is not "ok" gets `failed` = 1.
std::map<std::string, double> numbers(const json& j) {
    std::map<std::string, double> out;
    for (const auto& [key, value] : j.items()) {
        if (value.is_number() && std::isfinite(value.get<double>())) {
            out[key] = value.get<double>();
        }
    }
    if (j.contains("status") && j["status"].is_string() && j["status"] != "ok") {
        out["failed"] = 1;
    }
    return out;
}

}  // namespace

RunMetrics load_run_metrics(const std::string& path) {
    fs::path file = path;
    if (fs::is_directory(file)) {
        file /= "summary.json";
    }
    PF_CHECK(fs::exists(file), InputError, "failed to read metrics from {}: no such file{}", path,
             fs::is_directory(path) ? " (the directory has no summary.json)" : "");
    const json j =
        parse_json_text(read_file(file.string()), "failed to read metrics from " + file.string());
    PF_CHECK(j.is_object(), InputError, "failed to read metrics from {}: not a JSON object",
             file.string());
    RunMetrics out;
    PF_CHECK(!j.contains("runs") || j["runs"].is_array(), InputError,
             "failed to read metrics from {}: \"runs\" is not a list", file.string());
    if (j.contains("runs")) {
        for (const auto& r : j["runs"]) {
            PF_CHECK(r.is_object() && r.contains("name") && r["name"].is_string(), InputError,
                     "failed to read metrics from {}: every entry of \"runs\" needs a \"name\"",
                     file.string());
            out[r["name"].get<std::string>()] = numbers(r);
        }
    } else if (j.contains("results") && j["results"].is_array()) {
        for (const auto& r : j["results"]) {  // pocketflow bench --json
            PF_CHECK(r.is_object() && r.contains("model") && r["model"].is_string() &&
                         r.contains("runtime") && r["runtime"].is_string() && r.contains("batch") &&
                         r["batch"].is_number_integer(),
                     InputError, "failed to read metrics from {}: not a bench result",
                     file.string());
            out[fmt::format(
                "{} {} b{}", fs::path(r["model"].get<std::string>()).filename().string(),
                r["runtime"].get<std::string>(), r["batch"].get<int64_t>())] = numbers(r);
        }
    } else {
        const auto dir = j.find("run_dir");
        out[dir != j.end() && dir->is_string() ? dir->get<std::string>()
                                               : file.parent_path().string()] = numbers(j);
    }
    PF_CHECK(!out.empty(), InputError, "failed to read metrics from {}: no runs in it",
             file.string());
    return out;
}

MetricLimit parse_metric_limit(const std::string& text,
                               MetricLimit::Kind kind,
                               const std::string& option) {
    const auto eq = text.find('=');
    MetricLimit limit;
    limit.kind = kind;
    double value = 0;
    bool ok = eq != std::string::npos && eq > 0;
    if (ok) {
        limit.metric = text.substr(0, eq);
        try {
            size_t used = 0;
            value = std::stod(text.substr(eq + 1), &used);
            ok = used == text.size() - eq - 1 && std::isfinite(value) && value >= 0;
        } catch (const std::exception&) {
            ok = false;
        }
    }
    PF_CHECK(ok && (kind != MetricLimit::kRatio || value > 0), ConfigError,
             "{} {}: expected metric=value with a value {} (e.g. {} {})", option, text,
             kind == MetricLimit::kRatio ? "above 0" : "of at least 0", option,
             kind == MetricLimit::kRatio ? "median_ms=1.10" : "top1=0.3");
    limit.value = value;
    return limit;
}

std::vector<RegressionRow> check_regressions(const RunMetrics& baseline,
                                             const RunMetrics& results,
                                             const std::vector<MetricLimit>& limits) {
    std::vector<RegressionRow> rows;
    const bool single = baseline.size() == 1 && results.size() == 1;
    if (!single) {
        for (const auto& [name, metrics] : baseline) {
            if (!results.count(name)) {  // a run that did not happen is a regression too
                RegressionRow row;
                row.entry = name;
                row.metric = "present";
                row.baseline = 1;
                row.result = 0;
                row.limit = "in the results";
                row.regressed = true;
                rows.push_back(std::move(row));
            }
        }
    }
    for (const auto& [name, metrics] : results) {
        auto base = single ? baseline.begin() : baseline.find(name);
        PF_CHECK(base != baseline.end(), ConfigError,
                 "check: the results have {} but the baseline does not (it has: {})", name,
                 fmt::join(
                     [&] {
                         std::vector<std::string> names;
                         for (const auto& [n, m] : baseline) {
                             names.push_back(n);
                         }
                         return names;
                     }(),
                     ", "));
        if (metrics.count("failed")) {  // a failed or interrupted sweep run has no metrics
            RegressionRow row;
            row.entry = name;
            row.metric = "status";
            row.baseline = base->second.count("failed") ? 0 : 1;
            row.result = 0;
            row.limit = "run succeeds";
            row.regressed = true;
            rows.push_back(std::move(row));
            continue;
        }
        for (const auto& limit : limits) {
            auto b = base->second.find(limit.metric);
            auto r = metrics.find(limit.metric);
            if (b == base->second.end()) {
                continue;  // a baseline entry without the metric does not limit it (a reference
                           // table gives MACs only where the reference states them)
            }
            PF_CHECK(r != metrics.end(), ConfigError,
                     "check: metric {} is missing from the results of {} (the baseline has it)",
                     limit.metric, name);
            RegressionRow row;
            row.entry = name;
            row.metric = limit.metric;
            row.baseline = b->second;
            row.result = r->second;
            switch (limit.kind) {
                case MetricLimit::kDrop:
                    row.regressed = row.baseline - row.result > limit.value + 1e-12;
                    row.limit = fmt::format("drop ≤ {:g}", limit.value);
                    break;
                case MetricLimit::kRise:
                    row.regressed = row.result - row.baseline > limit.value + 1e-12;
                    row.limit = fmt::format("rise ≤ {:g}", limit.value);
                    break;
                case MetricLimit::kRatio:
                    row.regressed = row.baseline > 0
                                        ? row.result / row.baseline > limit.value + 1e-12
                                        : row.result > row.baseline;
                    row.limit = fmt::format("ratio ≤ {:g}", limit.value);
                    break;
            }
            rows.push_back(std::move(row));
        }
    }
    for (const auto& limit : limits) {  // a limit that checks nothing is a typo
        const bool anywhere = std::any_of(baseline.begin(), baseline.end(), [&](const auto& e) {
            return e.second.count(limit.metric) > 0;
        });
        PF_CHECK(anywhere, ConfigError, "check: metric {} is in no entry of the baseline",
                 limit.metric);
    }
    return rows;
}

void write_baseline(const RunMetrics& results,
                    const std::vector<MetricLimit>& limits,
                    const std::string& source,
                    const std::string& path) {
    json out = {{"source", source}, {"limits", json::object()}, {"runs", json::array()}};
    for (const auto& l : limits) {
        const char* kind = l.kind == MetricLimit::kDrop   ? "max_drop"
                           : l.kind == MetricLimit::kRise ? "max_rise"
                                                          : "max_ratio";
        out["limits"][kind][l.metric] = l.value;
    }
    for (const auto& [name, metrics] : results) {
        PF_CHECK(!metrics.count("failed"), InputError,
                 "{}: run {} did not finish: a baseline holds finished runs only", path, name);
        json entry = {{"name", name}};
        for (const auto& [metric, value] : metrics) {
            entry[metric] = value;
        }
        out["runs"].push_back(std::move(entry));
    }
    write_file_atomic(path, json_text(out, 2) + "\n");
}

std::vector<MetricLimit> load_baseline_limits(const std::string& path) {
    fs::path file = path;
    if (fs::is_directory(file)) {
        return {};  // a run directory carries no limits
    }
    const json j = parse_json_text(read_file(file.string()), "failed to read " + file.string());
    std::vector<MetricLimit> out;
    if (!j.is_object() || !j.contains("limits")) {
        return out;
    }
    const json& limits = j["limits"];
    PF_CHECK(limits.is_object(), InputError,
             "{}: \"limits\" is {{\"max_drop\": {{\"top1\": 0.3}}, \"max_ratio\": {{...}}, "
             "\"max_rise\": {{...}}}}",
             file.string());
    for (const auto& [kind, entries] : limits.items()) {
        const MetricLimit::Kind k =
            kind == "max_drop"   ? MetricLimit::kDrop
            : kind == "max_rise" ? MetricLimit::kRise
            : kind == "max_ratio"
                ? MetricLimit::kRatio
                : throw InputError(fmt::format("{}: limits.{}: expected max_drop, "
                                               "max_rise or max_ratio",
                                               file.string(), kind));
        PF_CHECK(entries.is_object(), InputError, "{}: limits.{}: expected {{metric: value}}",
                 file.string(), kind);
        for (const auto& [metric, value] : entries.items()) {
            PF_CHECK(value.is_number() && std::isfinite(value.get<double>()) &&
                         value.get<double>() >= 0 &&
                         (k != MetricLimit::kRatio || value.get<double>() > 0),
                     InputError, "{}: limits.{}.{}: expected a number {}", file.string(), kind,
                     metric, k == MetricLimit::kRatio ? "above 0" : "of at least 0");
            out.push_back({metric, k, value.get<double>()});
        }
    }
    return out;
}

}  // namespace pocketflow
