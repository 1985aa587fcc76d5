// SPDX-License-Identifier: Apache-2.0
// `pocketflow report`: the Pareto front, the model description, what is gathered from a run
// directory (curves of a resumed run, torn lines, search logs) and the page's escaping.
#include "pocketflow/report.h"

#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pocketflow/error.h"
#include "pocketflow/graph.h"
#include "pocketflow/model.h"
#include "pocketflow/pfm.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_error;
using testing::TempDir;

TEST(ReportTest, ParetoFrontKeepsTheUndominatedPoints) {
    // (cost, accuracy)
    const std::vector<std::pair<double, double>> points = {{10, 90}, {5, 85},  {5, 88},  {20, 89},
                                                           {1, 50},  {30, 95}, {20, 95}, {7, NAN}};
    EXPECT_EQ(pareto_front(points), (std::vector<size_t>{4, 2, 0, 6}));
    EXPECT_TRUE(pareto_front({}).empty());
    EXPECT_EQ(pareto_front({{3, 1}}), (std::vector<size_t>{0}));
    EXPECT_EQ(pareto_front({{3, 1}, {3, 1}}), (std::vector<size_t>{0}));  // ties: the first
}

TEST(ReportTest, DescribeModelCountsChannelsSparsityAndBytes) {
    Graph g = build_zoo_model("lenet5", 10, {1, 28, 28});
    json d = describe_model(g);
    EXPECT_EQ(d["params"], g.total_params());
    EXPECT_EQ(d["macs"], g.total_macs());
    EXPECT_FALSE(d["compressed"].get<bool>());
    EXPECT_DOUBLE_EQ(d["compression"].get<double>(), 1.0);
    bool seen = false;
    for (auto& n : g.nodes()) {
        if (n.name == "conv2") {
            set_magnitude_mask(n, 0.75);
        }
    }
    d = describe_model(g);
    for (const auto& row : d["layers"]) {
        if (row["name"] == "conv2") {
            seen = true;
            EXPECT_EQ(row["weight_shape"], (std::vector<int64_t>{16, 6, 5, 5}));
            EXPECT_NEAR(row["sparsity"].get<double>(), 0.75, 1e-3);
            EXPECT_TRUE(row.contains("storage"));
        }
        if (row["op"] == "ReLU") {
            EXPECT_FALSE(row.contains("weight_shape"));
        }
    }
    EXPECT_TRUE(seen);
    EXPECT_TRUE(d["compressed"].get<bool>());
    EXPECT_GT(d["compression"].get<double>(), 1.0);
}

TEST(ReportTest, CollectsCurvesSearchesAndModelsOfARunDirectory) {
    TempDir dir;
    const fs::path run = dir.path() / "run";
    fs::create_directories(run / "search" / "stage0");
    const Graph base = build_zoo_model("lenet5", 10, {1, 28, 28});
    save_model((dir.path() / "base.pfm").string(), base, ModelMeta{});
    Graph pruned = base.clone();
    for (auto& n : pruned.nodes()) {
        if (n.name == "conv2") {
            set_magnitude_mask(n, 0.5);
        }
    }
    save_model((run / "model.pfm").string(), pruned, ModelMeta{});
    write_file_atomic(run / "summary.json",
                      json{{"top1", 90.5},
                           {"macs", 100},
                           {"weight_bytes", 2000},
                           {"stages", {{{"learner", "weight_sparsification"}}}}}
                          .dump());
    write_file_atomic(run / "resolved_config.yaml",
                      "model:\n  path: " + (dir.path() / "base.pfm").string() + "\n");
    // A resumed run logs steps 2 and 4 twice (the last record wins); a torn last line.
    write_file_atomic(run / "metrics.jsonl",
                      "{\"kind\":\"step\",\"stage\":\"s0\",\"epoch\":1,\"step\":2,\"loss\":2.0,"
                      "\"top1\":10}\n"
                      "{\"kind\":\"step\",\"stage\":\"s0\",\"epoch\":1,\"step\":4,\"loss\":1.5,"
                      "\"top1\":20}\n"
                      "{\"kind\":\"step\",\"stage\":\"s0\",\"epoch\":1,\"step\":2,\"loss\":1.9,"
                      "\"top1\":11}\n"
                      "{\"kind\":\"step\",\"stage\":\"s0\",\"epoch\":1,\"step\":4,\"loss\":1.4,"
                      "\"top1\":21}\n"
                      "{\"kind\":\"epoch\",\"stage\":\"s0\",\"epoch\":1,\"val_top1\":30}\n"
                      "{\"kind\":\"step\",\"stage\":\"s1\",\"epoch\":1,\"step\":3,\"loss\":1.0,"
                      "\"top1\":40}\n"
                      "{\"kind\":\"step\",\"sta");
    write_file_atomic(run / "search" / "stage0" / "episodes.csv",
                      "episode,reward,cost,a0,a1\n0,50.5,0.4,0.1,0.2\n1,60,0.5,0.3,0.4\n2,5");
    const json data = collect_report({run.string()});
    ASSERT_EQ(data["runs"].size(), 1u);
    const json& r = data["runs"][0];
    EXPECT_EQ(r["status"], "ok");
    ASSERT_EQ(r["curves"].size(), 2u);
    const json& s0 = r["curves"][0];
    EXPECT_EQ(s0["steps"]["x"], (std::vector<int64_t>{2, 4}));
    EXPECT_EQ(s0["steps"]["top1"], (std::vector<double>{11, 21}));
    EXPECT_EQ(s0["epochs"]["x"], (std::vector<int64_t>{4}));  // the epoch's last step
    EXPECT_EQ(r["curves"][1]["steps"]["x"], (std::vector<int64_t>{4 + 3}));  // after stage s0
    ASSERT_EQ(r["searches"].size(), 1u);
    EXPECT_EQ(r["searches"][0]["reward"], (std::vector<double>{50.5, 60}));  // torn line dropped
    EXPECT_FALSE(r["searches"][0].contains("a0"));  // actions are not shown
    // Per-layer: the job's model file is the original.
    ASSERT_TRUE(r.contains("before")) << r.value("before_note", "");
    EXPECT_EQ(r["before"]["source"], (dir.path() / "base.pfm").string());
    EXPECT_GT(r["metrics"]["compression"].get<double>(), 1.0);
    bool sparse = false;
    for (const auto& l : r["after"]["layers"]) {
        sparse = sparse || (l["name"] == "conv2" && l["sparsity"].get<double>() > 0.49);
    }
    EXPECT_TRUE(sparse);
    // One run: no Pareto front (nothing to compare); two: the better one.
    EXPECT_TRUE(data["pareto"]["macs"].empty());
    EXPECT_FALSE(data["runs"][0].contains("pareto"));
    fs::copy(run, dir.path() / "worse", fs::copy_options::recursive);
    json worse = json::parse(read_file(dir.path() / "worse" / "summary.json"));
    worse["top1"] = 80.0;
    write_file_atomic(dir.path() / "worse" / "summary.json", worse.dump());
    const json two = collect_report({run.string(), (dir.path() / "worse").string()});
    EXPECT_EQ(two["pareto"]["macs"], json::array({0}));  // run indices
    EXPECT_TRUE(two["runs"][0]["pareto"]["macs"].get<bool>());
    EXPECT_FALSE(two["runs"][1].contains("pareto"));

    expect_error<InputError>([&] { collect_report({(dir.path() / "nothing").string()}); },
                             "is not a directory");
    expect_error<InputError>([&] { collect_report({(run / "search").string()}); },
                             "neither a run directory");
}

TEST(ReportTest, DamagedRunFilesAreNamedOrSkipped) {
    TempDir dir;
    fs::create_directories(dir.path() / "run");
    const std::string run = (dir.path() / "run").string();
    write_file_atomic(dir.path() / "run" / "summary.json", "[1, 2]");
    expect_error<InputError>([&] { collect_report({run}); }, "expected a JSON object");
    write_file_atomic(dir.path() / "run" / "summary.json", R"({"top1": "x", "stages": 5})");
    expect_error<InputError>([&] { collect_report({run}); }, "\"stages\" is not a list");
    write_file_atomic(dir.path() / "run" / "summary.json", R"({"top1": 1, "stages": [3]})");
    expect_error<InputError>([&] { collect_report({run}); }, "a stage that is not an object");
    // Records of the wrong types in metrics.jsonl are skipped, not fatal; fields of the wrong
    // type in a sweep's table are read as absent.
    write_file_atomic(dir.path() / "run" / "summary.json",
                      R"({"top1": 1, "stages": [{"learner": 7}]})");
    write_file_atomic(dir.path() / "run" / "metrics.jsonl",
                      "{\"kind\":\"step\",\"stage\":5,\"step\":\"x\"}\n"
                      "{\"kind\":\"step\",\"stage\":\"a\",\"step\":3,\"epoch\":\"e\"}\n");
    const json data = collect_report({run});
    EXPECT_EQ(data["runs"][0]["curves"].size(), 1u);
    fs::create_directories(dir.path() / "sweep");
    write_file_atomic(dir.path() / "sweep" / "results.json",
                      R"({"runs": [{"name": "r1", "status": "failed", "error": 5}]})");
    const json sweep = collect_report({(dir.path() / "sweep").string()});
    EXPECT_EQ(sweep["runs"][0]["status"], "failed");
    EXPECT_EQ(sweep["runs"][0]["error"], "");
}

TEST(ReportTest, PageInlinesTheLibraryAndEscapesTheData) {
    const json data = {{"runs", {{{"name", "</script><script>alert(1)</script> @JS@"}}}},
                       {"version", "x"}};
    const std::string page =
        render_report(data, "/* chart lib */ var Chart = 1; </script>", "t <i>@DATA@</i>");
    // The template's own script blocks only: neither the data nor the library closes one.
    size_t closes = 0;
    for (size_t at = page.find("</script>"); at != std::string::npos;
         at = page.find("</script>", at + 1)) {
        ++closes;
    }
    EXPECT_EQ(closes, 4u);
    EXPECT_NE(page.find("\\u003c/script>\\u003cscript>alert(1)"), std::string::npos);
    EXPECT_NE(page.find("t &lt;i&gt;@DATA@&lt;/i&gt;"), std::string::npos);  // not re-expanded
    EXPECT_NE(page.find("/* chart lib */"), std::string::npos);
    EXPECT_EQ(page.find("@CHARTJS@"), std::string::npos);
    expect_error<InputError>([] { find_chartjs("/nonexistent/chart.js"); },
                             "/nonexistent/chart.js");
}

}  // namespace
}  // namespace pocketflow
