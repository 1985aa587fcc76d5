// SPDX-License-Identifier: Apache-2.0
// The regression gate of `pocketflow check` (reading run metrics, judging them against limits) and
// the run list of `pocketflow sweep`.
#include "pocketflow/regression.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pocketflow/error.h"
#include "pocketflow/sweep.h"
#include "pocketflow/util.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

using nlohmann::json;
using testing::expect_error;
using testing::TempDir;

TEST(RegressionTest, ReadsRunDirsSummariesTablesAndBenchResults) {
    TempDir dir;
    std::filesystem::create_directories(dir.path() / "run");
    write_file_atomic(dir.file("run/summary.json"), json{{"run_dir", "runs/a"},
                                                         {"top1", 91.5},
                                                         {"macs", 1000},
                                                         {"arch", "x"},
                                                         {"stages", json::array()}}
                                                        .dump());
    RunMetrics run = load_run_metrics(dir.file("run"));
    ASSERT_EQ(run.size(), 1u);
    EXPECT_DOUBLE_EQ(run.at("runs/a").at("top1"), 91.5);
    EXPECT_EQ(run.at("runs/a").count("arch"), 0u);  // numbers only
    write_file_atomic(
        dir.file("table.json"),
        json{{"runs", {{{"name", "l1"}, {"top1", 90.0}}, {{"name", "lasso"}, {"top1", 91.0}}}}}
            .dump());
    RunMetrics table = load_run_metrics(dir.file("table.json"));
    EXPECT_DOUBLE_EQ(table.at("lasso").at("top1"), 91.0);
    write_file_atomic(dir.file("bench.json"), json{{"results",
                                                    {{{"model", "a/base.pfm"},
                                                      {"runtime", "onnxruntime"},
                                                      {"batch", 16},
                                                      {"median_ms", 2.5}}}}}
                                                  .dump());
    EXPECT_DOUBLE_EQ(
        load_run_metrics(dir.file("bench.json")).at("base.pfm onnxruntime b16").at("median_ms"),
        2.5);
    expect_error<InputError>([&] { load_run_metrics(dir.file("none.json")); }, "no such file");
    write_file_atomic(dir.file("bad.json"), "{\"runs\": [{\"top1\": 1}]}");
    expect_error<InputError>([&] { load_run_metrics(dir.file("bad.json")); }, "needs a \"name\"");
    write_file_atomic(dir.file("text.json"), "not json");
    expect_error<InputError>([&] { load_run_metrics(dir.file("text.json")); }, "text.json");
}

TEST(RegressionTest, LimitsJudgeDropsRisesAndRatios) {
    const RunMetrics base = {{"a", {{"top1", 92.0}, {"loss", 0.20}, {"median_ms", 10.0}}},
                             {"b", {{"top1", 80.0}, {"loss", 0.50}, {"median_ms", 5.0}}}};
    RunMetrics same = base;
    const std::vector<MetricLimit> limits = {{"top1", MetricLimit::kDrop, 0.3},
                                             {"loss", MetricLimit::kRise, 0.05},
                                             {"median_ms", MetricLimit::kRatio, 1.10}};
    for (const auto& row : check_regressions(base, same, limits)) {
        EXPECT_FALSE(row.regressed) << row.entry << " " << row.metric;
    }
    RunMetrics planted = base;
    planted["b"]["top1"] -= 1.0;       // a 1-point drop
    planted["a"]["median_ms"] = 11.0;  // exactly at the 1.10 limit: fine
    planted["a"]["loss"] = 0.26;       // 0.06 above: regressed
    int regressed = 0;
    for (const auto& row : check_regressions(base, planted, limits)) {
        regressed += row.regressed ? 1 : 0;
        if (row.regressed) {
            EXPECT_TRUE((row.entry == "b" && row.metric == "top1") ||
                        (row.entry == "a" && row.metric == "loss"))
                << row.entry << " " << row.metric;
        }
    }
    EXPECT_EQ(regressed, 2);
    // A single entry on each side is compared whatever the names.
    RunMetrics one = {{"runs/x", {{"top1", 91.0}}}};
    RunMetrics other = {{"runs/y", {{"top1", 90.5}}}};
    EXPECT_FALSE(check_regressions(one, other, {{"top1", MetricLimit::kDrop, 0.5}})[0].regressed);
    EXPECT_TRUE(check_regressions(one, other, {{"top1", MetricLimit::kDrop, 0.4}})[0].regressed);
    // A failed sweep run and a run missing from the results are regressions.
    RunMetrics partial = {{"a", {{"failed", 1.0}}}};
    const auto rows = check_regressions(base, partial, limits);
    int status = 0, missing = 0;
    for (const auto& row : rows) {
        status += row.entry == "a" && row.metric == "status" && row.regressed ? 1 : 0;
        missing += row.entry == "b" && row.metric == "present" && row.regressed ? 1 : 0;
    }
    EXPECT_EQ(status, 1);
    EXPECT_EQ(missing, 1);
    expect_error<ConfigError>(
        [&] {
            check_regressions(base, {{"c", {{"top1", 1.0}}}}, limits);
        },
        "the results have c but the baseline does not");
    expect_error<ConfigError>(
        [&] {
            check_regressions(one, other, {{"macs", MetricLimit::kRatio, 1}});
        },
        "metric macs is in no entry of the baseline");
    // A limit applies where the baseline states the metric (reference tables).
    RunMetrics reference = {{"a", {{"top1", 90.0}}}, {"b", {{"top1", 80.0}, {"macs", 100}}}};
    RunMetrics measured = {{"a", {{"top1", 90.0}, {"macs", 500}}},
                           {"b", {{"top1", 80.0}, {"macs", 101}}}};
    const auto ref_rows =
        check_regressions(reference, measured,
                          {{"top1", MetricLimit::kDrop, 0.3}, {"macs", MetricLimit::kRatio, 1.0}});
    ASSERT_EQ(ref_rows.size(), 3u);  // a: top1; b: top1, macs
    EXPECT_TRUE(ref_rows[2].regressed && ref_rows[2].metric == "macs");
    expect_error<ConfigError>(
        [&] {
            check_regressions(measured, reference, {{"macs", MetricLimit::kRatio, 1.0}});
        },
        "metric macs is missing from the results of a");
}

TEST(RegressionTest, BaselineFilesStateTheirLimits) {
    TempDir dir;
    write_file_atomic(dir.file("b.json"),
                      R"({"limits": {"max_drop": {"top1": 0.5}, "max_ratio": {"macs": 1.0}},
                          "runs": [{"name": "a", "top1": 1}]})");
    const auto limits = load_baseline_limits(dir.file("b.json"));
    ASSERT_EQ(limits.size(), 2u);
    EXPECT_EQ(limits[0].metric, "top1");
    EXPECT_EQ(limits[0].kind, MetricLimit::kDrop);
    EXPECT_DOUBLE_EQ(limits[0].value, 0.5);
    EXPECT_EQ(limits[1].kind, MetricLimit::kRatio);
    write_file_atomic(dir.file("none.json"), R"({"runs": [{"name": "a", "top1": 1}]})");
    EXPECT_TRUE(load_baseline_limits(dir.file("none.json")).empty());
    write_file_atomic(dir.file("bad.json"), R"({"limits": {"max_fall": {"top1": 1}}})");
    expect_error<InputError>([&] { load_baseline_limits(dir.file("bad.json")); },
                             "limits.max_fall: expected max_drop");
    write_file_atomic(dir.file("bad2.json"), R"({"limits": {"max_ratio": {"macs": 0}}})");
    expect_error<InputError>([&] { load_baseline_limits(dir.file("bad2.json")); },
                             "limits.max_ratio.macs: expected a number above 0");
}

TEST(RegressionTest, LimitsParseAndRejectBadText) {
    MetricLimit l = parse_metric_limit("median_ms=1.10", MetricLimit::kRatio, "--max-ratio");
    EXPECT_EQ(l.metric, "median_ms");
    EXPECT_DOUBLE_EQ(l.value, 1.10);
    for (const char* bad : {"top1", "=0.3", "top1=x", "top1=-1", "top1=0.3abc"}) {
        expect_error<ConfigError>(
            [&] { parse_metric_limit(bad, MetricLimit::kDrop, "--max-drop"); }, "--max-drop");
    }
    expect_error<ConfigError>(
        [&] { parse_metric_limit("ms=0", MetricLimit::kRatio, "--max-ratio"); }, "above 0");
}

TEST(SweepTest, GridAndListExpandToNamedRuns) {
    EXPECT_EQ(split_values("0.3, 0.5,[1, 2],{a: 1, b: 2}"),
              (std::vector<std::string>{"0.3", "0.5", "[1, 2]", "{a: 1, b: 2}"}));
    SweepOptions o;
    o.grid = {{"pipeline.0.flops_target", {"0.3", "0.5"}},
              {"pipeline.0.criterion", {"l1", "lasso"}}};
    o.runs = {{"pipeline.0.flops_target=0.7"}};
    const auto runs = sweep_runs(o);
    ASSERT_EQ(runs.size(), 5u);
    EXPECT_EQ(runs[0].name, "pipeline.0.flops_target=0.3_pipeline.0.criterion=l1");
    EXPECT_EQ(runs[1].overrides, (std::vector<std::string>{"pipeline.0.flops_target=0.3",
                                                           "pipeline.0.criterion=lasso"}));
    EXPECT_EQ(runs[4].name, "pipeline.0.flops_target=0.7");
    SweepOptions none;
    expect_error<ConfigError>([&] { sweep_runs(none); }, "give --grid");
    TempDir dir;
    write_file_atomic(
        dir.file("s.yaml"),
        "grid:\n  train.epochs: [1, 2]\nruns:\n  - {pipeline.0.bits: {weights: 4}}\n");
    SweepOptions f;
    load_sweep_file(dir.file("s.yaml"), f);
    ASSERT_EQ(f.grid.size(), 1u);
    EXPECT_EQ(f.grid[0].second, (std::vector<std::string>{"1", "2"}));
    ASSERT_EQ(f.runs.size(), 1u);
    EXPECT_EQ(f.runs[0][0], "pipeline.0.bits={weights: 4}");
    write_file_atomic(dir.file("bad.yaml"), "grid:\n  train.epochs: 3\n");
    SweepOptions b;
    expect_error<ConfigError>([&] { load_sweep_file(dir.file("bad.yaml"), b); },
                              "bad.yaml:2:17: grid.train.epochs: expected a non-empty list");
    write_file_atomic(dir.file("typo.yaml"), "grids: {}\n");
    expect_error<ConfigError>([&] { load_sweep_file(dir.file("typo.yaml"), b); },
                              "unknown key grids");
}

TEST(SweepTest, JobsOfASuiteAndVariables) {
    TempDir dir;
    std::filesystem::create_directories(dir.path() / "suite");
    write_file_atomic(dir.file("suite/s.yaml"),
                      "jobs:\n"
                      "  - {name: base, config: jobs/train.yaml, set: {train.epochs: 2}}\n"
                      "  - name: pruned\n"
                      "    config: /abs/job.yaml\n"
                      "    set: {model.path: \"${SWEEP_OUT}/base/model.pfm\", data.root: "
                      "\"${PF_TEST_UNSET_ROOT:-data/x}\"}\n");
    SweepOptions o;
    o.config = "ignored-by-jobs.yaml";
    load_sweep_file(dir.file("suite/s.yaml"), o);
    const auto runs = sweep_runs(o);
    ASSERT_EQ(runs.size(), 2u);
    EXPECT_EQ(runs[0].name, "base");
    EXPECT_EQ(runs[0].config, dir.file("suite/jobs/train.yaml"));  // beside the sweep file
    EXPECT_EQ(runs[0].overrides, (std::vector<std::string>{"train.epochs=2"}));
    EXPECT_EQ(runs[1].config, "/abs/job.yaml");
    EXPECT_EQ(expand_variables(runs[1].overrides[0], {{"SWEEP_OUT", "out/s"}}, "w"),
              "model.path=\"out/s/base/model.pfm\"");
    EXPECT_EQ(expand_variables(runs[1].overrides[1], {}, "w"), "data.root=\"data/x\"");
    EXPECT_EQ(expand_variables("a${X}b${Y:-}c", {{"X", "1"}}, "w"), "a1bc");
    expect_error<ConfigError>([] { expand_variables("${PF_TEST_UNSET_ROOT}", {}, "run r"); },
                              "run r: ${PF_TEST_UNSET_ROOT} is not set");
    expect_error<ConfigError>([] { expand_variables("a${X", {}, "w"); }, "unclosed");
    // Bad jobs: named with file and line.
    for (const auto& [text, message] : std::vector<std::pair<std::string, std::string>>{
             {"jobs:\n  - {config: a.yaml}\n", "s2.yaml:2:5: a job needs a name"},
             {"jobs:\n  - {name: a/b}\n", "not a plain file name"},
             {"jobs:\n  - {name: a, sets: {}}\n", "unknown key jobs.sets"},
             {"jobs:\n  - {name: a, set: [1]}\n", "jobs.set: expected"},
             {"jobs:\n  - {name: a}\n  - {name: a}\n", "job a is listed twice"},
             {"jobs:\n  - {name: ..}\n", "not starting with ."},
             {"jobs:\n  - {name: results.json}\n", "would collide with the sweep's own files"},
             {"jobs:\n  - {name: a.log}\n", "would collide"}}) {
        write_file_atomic(dir.file("s2.yaml"), text);
        SweepOptions bad;
        expect_error<ConfigError>(
            [&] {
                load_sweep_file(dir.file("s2.yaml"), bad);
                sweep_runs(bad);
            },
            message);
    }
}

}  // namespace
}  // namespace pocketflow
