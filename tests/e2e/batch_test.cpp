// SPDX-License-Identifier: Apache-2.0
// End-to-end tests of `pocketflow sweep` and `pocketflow check`.
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pocketflow/util.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(CliTest, CheckGatesARegressionAndPassesARerun) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    Result base = cli("--json train --config job.yaml --set output_dir=base", dir);
    ASSERT_EQ(base.code, 0) << base.err;
    Result rerun = cli("--json train --config job.yaml --set output_dir=rerun", dir);
    ASSERT_EQ(rerun.code, 0) << rerun.err;
    // A rerun of the baseline (same seed, same machine) passes the default gate and size limits.
    Result same =
        cli("check --baseline base --results rerun --max-drop top1=0.3 --max-ratio "
            "file_bytes=1.0 --max-rise loss=0.001",
            dir);
    EXPECT_EQ(same.code, 0) << same.out << same.err;
    EXPECT_NE(same.out.find("0 of 3 checks regressed"), std::string::npos) << same.out;
    // A planted 1-point drop fails it.
    json planted = json::parse(read_file(dir.file("rerun/summary.json")));
    planted["top1"] = planted["top1"].get<double>() - 1.0;
    write_file_atomic(dir.file("planted.json"), planted.dump());
    Result drop = cli("--json check --baseline base/summary.json --results planted.json", dir);
    EXPECT_EQ(drop.code, 1) << drop.err;
    json d = json::parse(drop.out);
    EXPECT_EQ(d["regressions"], 1);
    EXPECT_EQ(d["rows"][0]["metric"], "top1");
    EXPECT_TRUE(d["rows"][0]["regressed"].get<bool>());
    Result text = cli("check --baseline base --results planted.json", dir);
    EXPECT_NE(text.out.find("REGRESSED"), std::string::npos) << text.out;
    Result bad = cli("check --baseline base --results nowhere.json", dir);
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("nowhere.json"), std::string::npos) << bad.err;
}

TEST(CliTest, SweepRunsAGridResumesAndRecordsFailures) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    const std::string grid =
        "sweep --config job.yaml --set train.epochs=1 --grid train.optimizer.lr=0.1,0.05 "
        "--grid data.batch_size=32,64,16 --out sw --jobs 2";
    // One run was interrupted before the sweep (with another thread count than the sweep's
    // children get: that does not stop it resuming): a checkpoint, no summary.
    const std::string partial = "train.optimizer.lr=0.05_data.batch_size=64";
    Result stopped =
        cli("--threads 2 compress --config job.yaml --set train.epochs=1 --set "
            "train.optimizer.lr=0.05 --set data.batch_size=64 --set output_dir=sw/" +
                partial + " --stop-after-steps 3",
            dir);
    ASSERT_EQ(stopped.code, 130) << stopped.err;
    Result first = cli("--json " + grid + " --latency 4", dir);
    ASSERT_EQ(first.code, 0) << first.err;
    json r = json::parse(first.out);
    ASSERT_EQ(r["runs"].size(), 6u);
    for (const auto& run : r["runs"]) {
        EXPECT_EQ(run["status"], "ok") << run.dump();
        EXPECT_GT(run["top1"].get<double>(), 0.0);
        EXPECT_GT(run.value("latency_ms", 0.0), 0.0) << run.dump();  // timed after the runs
    }
    EXPECT_NE(read_file(dir.file("sw/" + partial + ".log")).find("resumed from"),
              std::string::npos);
    EXPECT_TRUE(fs::exists(dir.path() / "sw" / "results.csv"));
    // Rerun: nothing is redone.
    Result again = cli("--json " + grid, dir);
    ASSERT_EQ(again.code, 0) << again.err;
    for (const auto& run : json::parse(again.out)["runs"]) {
        EXPECT_TRUE(run.value("skipped", false)) << run.dump();
    }
    // The table is a baseline for check.
    Result gate = cli("check --baseline sw/results.json --results sw/results.json", dir);
    EXPECT_EQ(gate.code, 0) << gate.out << gate.err;
    // The same directory with other settings: nothing is taken for this sweep's results.
    Result other = cli("--json " + grid + " --set train.epochs=2", dir);
    EXPECT_EQ(other.code, 1);
    for (const auto& run : json::parse(other.out)["runs"]) {
        EXPECT_NE(run.value("error", "").find("holds a run of other settings"), std::string::npos)
            << run.dump();
    }
    // The job file changed since: the finished runs are not this sweep's results.
    std::string changed = kTinyJob;
    changed.replace(changed.find("seed: 3"), 7, "seed: 4");
    write_file_atomic(dir.file("job.yaml"), changed);
    Result edited = cli("--json " + grid, dir);
    EXPECT_EQ(edited.code, 1);
    for (const auto& run : json::parse(edited.out)["runs"]) {
        EXPECT_EQ(run["status"], "failed") << run.dump();
        EXPECT_NE(run.value("error", "").find("holds a finished run of another job"),
                  std::string::npos)
            << run.dump();
    }
    // A failing run is recorded with its error; the others still run.
    Result failing =
        cli("--json sweep --config job.yaml --set train.epochs=1 --grid "
            "train.optimizer.lr=0.1,-1 --out bad",
            dir);
    EXPECT_EQ(failing.code, 1) << failing.err;  // a run failed (the table says which)
    json f = json::parse(failing.out);
    ASSERT_EQ(f["runs"].size(), 2u);
    EXPECT_EQ(f["runs"][0]["status"], "ok");
    EXPECT_EQ(f["runs"][1]["status"], "failed");
    EXPECT_NE(f["runs"][1]["error"].get<std::string>().find("train.optimizer.lr"),
              std::string::npos)
        << f["runs"][1].dump();
    Result text =
        cli("sweep --config job.yaml --set train.epochs=1 --grid train.optimizer.lr=0.1,-1 "
            "--out bad",
            dir);
    EXPECT_EQ(text.code, 1);  // the table names the failure
    EXPECT_NE(text.out.find("1 failed"), std::string::npos) << text.out;
    Result no_grid = cli("sweep --config job.yaml --grid lr", dir);
    EXPECT_EQ(no_grid.code, 2);
    EXPECT_NE(no_grid.err.find("expected key=v1,v2"), std::string::npos) << no_grid.err;
}

}  // namespace
}  // namespace pocketflow
