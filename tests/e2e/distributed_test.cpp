// SPDX-License-Identifier: Apache-2.0
// Data-parallel training end to end: `--nproc N` and torchrun-style launches of the CLI.
#include <chrono>
#include <csignal>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "pocketflow/pfm.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

using nlohmann::json;

/// The tiny job without BatchNorm (LeNet-5), augmentation on: 448 training images.
std::string job_without_bn() {
    return kTinyJob;
}

/// The largest difference between the weights of two model files of the same graph.
double max_weight_difference(const std::string& a, const std::string& b) {
    ModelFile x = load_model(a), y = load_model(b);
    double worst = 0;
    EXPECT_EQ(x.graph.nodes().size(), y.graph.nodes().size());
    for (size_t i = 0; i < x.graph.nodes().size() && i < y.graph.nodes().size(); ++i) {
        for (const auto& [key, t] : x.graph.nodes()[i].params) {
            const at::Tensor& u = y.graph.nodes()[i].params.at(key);
            worst = std::max(worst, (t - u).abs().max().item<double>());
        }
    }
    return worst;
}

TEST(Distributed, TwoWorkersAtHalfBatchGiveOneWorkersWeights) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), job_without_bn());
    // One worker at batch 32; two at 16 with the lr tuned for a global batch of 32 (linear rule:
    // x 2·16/32 = 1). Each step sees the same 32 images, augmented alike.
    Result one = cli("--json train --config job.yaml --set output_dir=one", dir);
    ASSERT_EQ(one.code, 0) << one.err;
    Result two =
        cli("--json train --config job.yaml --nproc 2 --set output_dir=two "
            "--set data.batch_size=16 --set train.reference_batch=32",
            dir);
    ASSERT_EQ(two.code, 0) << two.err;
    EXPECT_NE(two.err.find("2 workers x batch 16 = global batch 32; lr x 1"), std::string::npos)
        << two.err;
    const double diff = max_weight_difference(dir.file("one/model.pfm"), dir.file("two/model.pfm"));
    EXPECT_LT(diff, 1e-4);
    const json s1 = json::parse(one.out), s2 = json::parse(two.out);
    EXPECT_EQ(s1["stages"][0]["steps"], s2["stages"][0]["steps"]);
    EXPECT_NEAR(s1["loss"].get<double>(), s2["loss"].get<double>(), 1e-4);
    // Only rank 0 prints the result and writes the run directory.
    EXPECT_EQ(std::count(two.out.begin(), two.out.end(), '\n'), 1) << two.out;
    EXPECT_TRUE(std::filesystem::exists(dir.path() / "two" / "summary.json"));

    // Without the reference batch, the linear rule doubles the lr for the doubled global batch.
    Result scaled =
        cli("--json train --config job.yaml --nproc 2 --set output_dir=scaled --set train.epochs=1",
            dir);
    ASSERT_EQ(scaled.code, 0) << scaled.err;
    EXPECT_NE(scaled.err.find("global batch 64; lr x 2"), std::string::npos) << scaled.err;
}

/// The tiny job with ResNet-20 (BatchNorm) and `train_keys` in place of `epochs: 3`, as job.yaml
/// in `dir`, trained on one worker at batch 32 into one/.
void train_one_resnet20(const testing::TempDir& dir, const std::string& train_keys) {
    std::string job = kTinyJob;
    job.replace(job.find("arch: lenet5"), 12, "arch: resnet20");
    job.replace(job.find("epochs: 3"), 9, train_keys);
    write_file_atomic(dir.file("job.yaml"), job);
    Result one = cli("--json train --config job.yaml --set output_dir=one", dir);
    ASSERT_EQ(one.code, 0) << one.err;
}

/// Two workers at batch 16 with the lr of one at 32: the command up to output_dir=.
const char* kTwoAtHalfBatch =
    "--json train --config job.yaml --nproc 2 --set data.batch_size=16 "
    "--set train.reference_batch=32 --set output_dir=";

TEST(Distributed, WithBatchNormTheAccuracyMatches) {
    testing::TempDir dir;
    ASSERT_NO_FATAL_FAILURE(train_one_resnet20(dir, "epochs: 8"));
    Result one{0, read_file(dir.file("one/summary.json")), ""};
    Result two = cli(std::string(kTwoAtHalfBatch) + "two", dir);
    ASSERT_EQ(two.code, 0) << two.err;
    // BatchNorm statistics come from 16 images a worker instead of 32: close, not equal.
    const double a = json::parse(one.out)["top1"].get<double>();
    const double b = json::parse(two.out)["top1"].get<double>();
    EXPECT_GT(a, 60.0);
    EXPECT_NEAR(a, b, 10.0);
}

TEST(Distributed, SyncBatchNormGivesOneWorkersWeights) {
    testing::TempDir dir;
    // Two steps: this tiny network on its synthetic images amplifies any difference in the order
    // of float sums within a few more (one worker with one thread against two threads drifts
    // apart as much as synchronised workers do), so the comparison is made before that.
    ASSERT_NO_FATAL_FAILURE(train_one_resnet20(dir, "epochs: 1\n  steps_per_epoch: 2"));
    const std::string two = kTwoAtHalfBatch;
    Result synced = cli(two + "synced --set train.sync_bn=true", dir);
    ASSERT_EQ(synced.code, 0) << synced.err;
    EXPECT_NE(synced.err.find("BatchNorm synchronised"), std::string::npos) << synced.err;
    Result own = cli(two + "own", dir);
    ASSERT_EQ(own.code, 0) << own.err;
    // Normalised over the same 32 images as one worker, the two workers compute one worker's
    // training (up to the order of float sums); each on its own 16 images, they do not.
    const double synced_diff =
        max_weight_difference(dir.file("one/model.pfm"), dir.file("synced/model.pfm"));
    const double own_diff =
        max_weight_difference(dir.file("one/model.pfm"), dir.file("own/model.pfm"));
    // Measured: 4e-3 synchronised and 0.11 with each worker's own statistics (over the files'
    // tensor data, one worker with two threads differs from one with one thread as synchronised
    // workers do).
    EXPECT_LT(synced_diff, 1e-2) << "own statistics: " << own_diff;
    std::cerr << "max weight difference to one worker: synchronised " << synced_diff
              << ", own statistics " << own_diff << "\n";
    EXPECT_LT(synced_diff * 10, own_diff);
}

TEST(Distributed, InterruptedWorkersResumeToTheUninterruptedResult) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), job_without_bn());
    const std::string args =
        "train --config job.yaml --nproc 2 --set data.batch_size=16 --set output_dir=";
    Result stopped = cli(args + "run --stop-after-steps 20", dir);
    EXPECT_EQ(stopped.code, 130) << stopped.err;
    EXPECT_NE(stopped.err.find("checkpoint saved to run/checkpoints"), std::string::npos)
        << stopped.err;
    EXPECT_NE(stopped.err.find("saved by rank 0"), std::string::npos) << stopped.err;
    // Its position counts two workers' batches: one worker may not take it over.
    Result alone =
        cli("train --config job.yaml --set data.batch_size=16 --set output_dir=run --resume", dir);
    EXPECT_EQ(alone.code, 2) << alone.err;
    EXPECT_NE(alone.err.find("written by 2 worker(s), this run has 1"), std::string::npos)
        << alone.err;
    Result resumed = cli(args + "run --resume", dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    EXPECT_NE(resumed.err.find("resumed from"), std::string::npos);
    Result straight = cli(args + "straight", dir);
    ASSERT_EQ(straight.code, 0) << straight.err;
    EXPECT_EQ(read_file(dir.file("run/model.pfm")), read_file(dir.file("straight/model.pfm")));
}

TEST(Distributed, InterruptedQatResumesToTheUninterruptedResult) {
    // QAT's activation ranges move with every batch and set the fake quantization of the next
    // forward: the workers must share them, or a resume (which hands every worker rank 0's
    // checkpoint) changes rank 1's quantizers and so the averaged gradients.
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    const std::string args =
        "compress --config job.yaml --nproc 2 " + from_base +
        "--set 'pipeline=[{learner: uniform_quantization, mode: qat, bits: 8, epochs: 1}]' "
        "--set output_dir=";
    Result stopped = cli(args + "run --stop-after-steps 4", dir);
    EXPECT_EQ(stopped.code, 130) << stopped.err;
    Result resumed = cli(args + "run --resume", dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    Result straight = cli(args + "straight", dir);
    ASSERT_EQ(straight.code, 0) << straight.err;
    EXPECT_TRUE(read_file(dir.file("run/model.pfm")) == read_file(dir.file("straight/model.pfm")))
        << "the resumed QAT model differs from the uninterrupted one";
}

TEST(Distributed, RankZerosErrorEndsEveryWorkerWithItsExitCode) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), job_without_bn());
    const std::string args = "train --config job.yaml --nproc 2 --set output_dir=run ";
    Result first = cli(args + "--set train.epochs=1", dir);
    ASSERT_EQ(first.code, 0) << first.err;
    // Only rank 0 reads the run directory: it refuses to resume another job (exit 2); rank 1
    // learns why from the store instead of from a broken connection.
    const auto start = std::chrono::steady_clock::now();
    Result changed = cli(args + "--set train.epochs=2 --resume", dir);
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(changed.code, 2) << changed.err;
    EXPECT_NE(changed.err.find("the job differs from the run's resolved_config.yaml"),
              std::string::npos)
        << changed.err;
    EXPECT_NE(changed.err.find("[rank 1] [error] rank 0 failed: failed to resume"),
              std::string::npos)
        << changed.err;
    EXPECT_LT(took, 20.0);
}

TEST(Distributed, SearchRunsOnceAndEveryWorkerPrunesItsResult) {
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    const std::string stage =
        "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.7, ratios: auto, samples: 32, "
        "channel_multiple: 1, finetune_epochs: 1, search: {episodes: 6, warmup: 2, samples: "
        "32, rerank: 1}}]' ";
    Result r =
        cli("--json compress --config job.yaml --nproc 2 --set output_dir=cp " + from_base + stage,
            dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const json s = json::parse(r.out);
    EXPECT_EQ(s["stages"][0]["search"]["episodes"], 6);
    const std::string csv = read_file(dir.path() / "cp" / "search" / "stage0" / "episodes.csv");
    EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);  // header + 6: one searcher
    EXPECT_LE(s["stages"][0]["macs_kept"].get<double>(), 0.72);
    // The rerank trains on rank 0 alone over the whole training set: one epoch is 14 steps of
    // 32 (448 images), not a worker's shard of 7.
    EXPECT_EQ(s["stages"][0]["search"]["rerank"]["steps"], 14) << s["stages"][0]["search"].dump();
}

TEST(Distributed, SparsityScheduleCountsEachWorkersSteps) {
    // The Zhu-Gupta schedule is laid over the steps each worker takes: 448 training images
    // (512 - 64 validation), batch 32 per worker, two workers: 7 steps an epoch, 14 in two.
    // Counted over the whole set (28) the final masks would come only at the last step.
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    Result r = cli("--json compress --config job.yaml --nproc 2 --set output_dir=sp " + from_base +
                       "--set 'pipeline=[{learner: weight_sparsification, sparsity: 0.5, epochs: "
                       "2, frequency: 1}]'",
                   dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const json st = json::parse(r.out)["stages"][0];
    EXPECT_EQ(st["schedule"]["total_steps"], 14) << st.dump();
    EXPECT_EQ(st["schedule"]["end_step"], 7) << st.dump();  // end 0.5: half-way
}

std::string read_or_empty(const std::string& path) {
    return std::filesystem::exists(path) ? read_file(path) : std::string();
}

/// Starts the CLI as worker `rank` of `world` under torchrun's variables; stderr to `log`.
pid_t start_worker(int rank, int world, int port, const std::string& args, const std::string& log) {
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::setenv("RANK", std::to_string(rank).c_str(), 1);
        ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
        ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
        ::setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
        ::setenv("MASTER_ADDR", "127.0.0.1", 1);
        ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
        const std::string cmd =
            fmt::format("exec '{}' {} >/dev/null 2>'{}'", POCKETFLOW_CLI, args, log);
        ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    return pid;
}

/// Waits up to `seconds` for `pid`; its exit code, -1 if still running, 128+n if killed by n.
int wait_for(pid_t pid, double seconds) {
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -1;
}

TEST(Distributed, AKilledWorkerStopsTheOthersWithItsName) {
    testing::TempDir dir;
    std::string job = kTinyJob;
    job.replace(job.find("epochs: 3"), 9, "epochs: 500");
    write_file_atomic(dir.file("job.yaml"), job);
    const int port = 20000 + static_cast<int>(::getpid() % 20000);
    const std::string args = fmt::format("train --config '{}' --set output_dir='{}'",
                                         dir.file("job.yaml"), dir.file("run"));
    const pid_t r0 = start_worker(0, 2, port, args, dir.file("rank0.txt"));
    const pid_t r1 = start_worker(1, 2, port, args, dir.file("rank1.txt"));
    // Mid-training: once rank 0 has logged a few epochs.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (read_or_empty(dir.file("rank0.txt")).find("epoch 3/500:") == std::string::npos &&
           std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_NE(read_or_empty(dir.file("rank0.txt")).find("epoch 3/500:"), std::string::npos)
        << read_or_empty(dir.file("rank0.txt")) << read_or_empty(dir.file("rank1.txt"));
    ::kill(r1, SIGKILL);
    const auto killed = std::chrono::steady_clock::now();
    EXPECT_EQ(wait_for(r1, 10), 128 + SIGKILL);
    const int code = wait_for(r0, 60);
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
    if (code == -1) {
        ::kill(r0, SIGKILL);
        wait_for(r0, 10);
    }
    EXPECT_NE(code, -1) << "rank 0 still ran 60 s after rank 1 was killed";
    EXPECT_NE(code, 0);
    EXPECT_LT(took, 60.0);
    const std::string err = read_or_empty(dir.file("rank0.txt"));
    EXPECT_NE(err.find("rank 1 (pid " + std::to_string(r1)), std::string::npos) << err;
}

TEST(Distributed, AHungWorkerIsNamedAfterItsHeartbeatStops) {
    testing::TempDir dir;
    std::string job = kTinyJob;
    job.replace(job.find("epochs: 3"), 9, "epochs: 500");
    write_file_atomic(dir.file("job.yaml"), job);
    const int port = 20000 + static_cast<int>((::getpid() + 7919) % 20000);
    const std::string args = fmt::format("train --config '{}' --set output_dir='{}'",
                                         dir.file("job.yaml"), dir.file("run"));
    ::setenv("POCKETFLOW_DEAD_AFTER", "3", 1);
    const pid_t r0 = start_worker(0, 2, port, args, dir.file("rank0.txt"));
    const pid_t r1 = start_worker(1, 2, port, args, dir.file("rank1.txt"));
    ::unsetenv("POCKETFLOW_DEAD_AFTER");
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (read_or_empty(dir.file("rank0.txt")).find("epoch 2/500:") == std::string::npos &&
           std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(r1, SIGSTOP);  // alive, silent: only its heartbeat tells
    const int code = wait_for(r0, 30);
    ::kill(r1, SIGKILL);
    wait_for(r1, 10);
    if (code == -1) {
        ::kill(r0, SIGKILL);
        wait_for(r0, 10);
    }
    EXPECT_NE(code, -1) << "rank 0 still ran 30 s after rank 1 hung";
    EXPECT_NE(code, 0);
    const std::string err = read_or_empty(dir.file("rank0.txt"));
    EXPECT_NE(err.find("rank 1 (pid " + std::to_string(r1)), std::string::npos) << err;
    EXPECT_NE(err.find("stopped responding: no heartbeat for 3 s"), std::string::npos) << err;
}

TEST(Distributed, NprocUnderALauncherIsRefused) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), job_without_bn());
    Result r = shell(fmt::format("cd '{}' && WORLD_SIZE=2 RANK=0 '{}' train --config job.yaml "
                                 "--nproc 2",
                                 dir.path().string(), POCKETFLOW_CLI),
                     dir);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_NE(r.err.find("--nproc 2: this process already runs under a launcher (WORLD_SIZE=2)"),
              std::string::npos)
        << r.err;
    Result bad = shell(fmt::format("cd '{}' && WORLD_SIZE=2 RANK=two '{}' train --config job.yaml",
                                   dir.path().string(), POCKETFLOW_CLI),
                       dir);
    EXPECT_EQ(bad.code, 2) << bad.err;
    EXPECT_NE(bad.err.find("environment variable RANK='two'"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace pocketflow
