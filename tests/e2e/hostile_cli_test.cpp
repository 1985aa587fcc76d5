// SPDX-License-Identifier: Apache-2.0
// Hostile input at the command line: exit 2 with a message naming the culprit (never a library's
// text, never a megabyte echoed), and the interruption edges (a stop during the final evaluation,
// temporary files of a killed write).
#include <filesystem>

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pocketflow/config.h"
#include "pocketflow/error.h"
#include "pocketflow/graph.h"
#include "pocketflow/learner.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(HostileCliTest, BadInputExitsTwoNamingTheCulprit) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    write_file_atomic(dir.file("afile"), "x");
    fs::create_symlink("loop_b", dir.path() / "loop_a");
    fs::create_symlink("loop_a", dir.path() / "loop_b");
    write_file_atomic(dir.file("long.yaml"),
                      "name: " + std::string(1 << 20, 'n') + "\nmodel: {arch: lenet5}\n");
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"frobnicate", "unknown command 'frobnicate' (commands: train, compress"},
        {"train --config job.yaml --set output_dir=afile", "afile is a file, not a directory"},
        {"train --config job.yaml --set output_dir=afile/run", "afile/run: Not a directory"},
        {"train --config long.yaml", "is 1048576 characters long; at most 128"},
        {"train --config job.yaml --set data.dataset=mnist --set data.root=loop_a", "loop_a"},
        {"compress --config job.yaml --set 'pipeline=[{learner: {x: 1}}]'",
         "pipeline[0].learner: expected a learner's name"},
        {"info --model job.yaml", "failed to"},
    };
    for (const auto& [args, message] : cases) {
        SCOPED_TRACE(args);
        Result r = cli(args, dir);
        EXPECT_EQ(r.code, 2) << r.err;
        EXPECT_NE(r.err.find(message), std::string::npos) << r.err.substr(0, 2000);
        EXPECT_LT(r.err.size(), 4000u);  // the megabyte name is not echoed
        EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << r.err;
        EXPECT_EQ(r.err.find("filesystem error"), std::string::npos) << r.err;
    }
}

TEST(HostileCliTest, AStageRerunOnResumeDrawsWhatItDrewInOneGo) {
    // A model with dropout (masks from LibTorch's global generator), two training stages. Killed
    // after stage 0 and before stage 1's first checkpoint, the resumed run loads stage 0 from its
    // file and reruns stage 1: the final weights must be the uninterrupted run's.
    testing::TempDir dir;
    Graph g({1, 12, 12});
    int x = g.add_unary("relu", Op::kReLU, g.add_conv("conv", 0, 1, 4, 3, 1, 1, 1, true));
    x = g.add_dropout("drop", g.add_unary("flat", Op::kFlatten, x), 0.5);
    g.set_output(g.add_linear("fc", x, 4 * 12 * 12, 4));
    init_weights(g, 5);
    save_model(dir.file("m.pfm"), g, {});
    std::string job = kTinyJob;
    job.replace(job.find("{arch: lenet5}"), 14, "{path: " + dir.file("m.pfm") + "}");
    job.replace(job.find("  - learner: full_precision\n"), 27,
                "  - {learner: full_precision, epochs: 1}\n  - {learner: full_precision, epochs: "
                "1}\n");
    Job once = parse_job(job, "job.yaml", {"output_dir=" + dir.file("once")});
    run_job(once, {});
    Job twice = parse_job(job, "job.yaml", {"output_dir=" + dir.file("twice")});
    run_job(twice, {});
    for (const char* gone :
         {"model.pfm", "summary.json", "stage1_full_precision.pfm", "stage1_full_precision.json",
          "checkpoints/stage1_full_precision.ckpt"}) {
        fs::remove(dir.path() / "twice" / gone);
    }
    RunOptions resume;
    resume.resume = true;
    // (A stage the generator state of the interrupted process would not reach: another stream.)
    at::manual_seed(12345);
    run_job(twice, resume);
    EXPECT_EQ(read_file(dir.file("once/model.pfm")), read_file(dir.file("twice/model.pfm")));
}

TEST(HostileCliTest, StopDuringTheFinalEvaluationIsHonoured) {
    testing::TempDir dir;
    // The job runs to the end once; then, resumed with every stage saved, only the final
    // evaluation is left — and a stop requested now must end the run with 130, not write a
    // summary as if nothing happened.
    Job job = parse_job(kTinyJob, "job.yaml", {"output_dir=" + dir.file("run"), "train.epochs=1"});
    run_job(job, {});
    fs::remove(dir.path() / "run" / "summary.json");
    fs::remove(dir.path() / "run" / "model.pfm");
    // A write killed half-way left a temporary file; the resumed run removes it (its process is
    // gone: pid 2^22 - 3 is above Linux's default pid_max).
    write_file_atomic(dir.path() / "run" / "checkpoints" / "last.ckpt.tmp.4194301", "partial");
    write_file_atomic(dir.path() / "run" / "search" / "stage0" / "episodes.csv.tmp.4194301", "x");
    set_stop_request(true);
    RunOptions resume;
    resume.resume = true;
    try {
        run_job(job, resume);
        ADD_FAILURE() << "the stop was ignored";
    } catch (const Interrupted& e) {
        EXPECT_NE(std::string(e.what()).find("during the final evaluation"), std::string::npos)
            << e.what();
    }
    set_stop_request(false);
    EXPECT_FALSE(fs::exists(dir.path() / "run" / "summary.json"));
    EXPECT_FALSE(fs::exists(dir.path() / "run" / "checkpoints" / "last.ckpt.tmp.4194301"));
    EXPECT_FALSE(fs::exists(dir.path() / "run" / "search" / "stage0" / "episodes.csv.tmp.4194301"));
    const json s = run_job(job, resume);
    EXPECT_TRUE(fs::exists(dir.path() / "run" / "summary.json"));
    EXPECT_GT(s["top1"].get<double>(), 0.0);
}

}  // namespace
}  // namespace pocketflow
