// SPDX-License-Identifier: Apache-2.0
// The committed benchmark suites (configs/benchmarks/) through tools/benchmark.sh on generated
// data in their real formats: CIFAR-10 binary batches and an ImageNet-style image folder with
// ONNX models. The data is noise, so the reference gate must fail — on accuracy, by name, with
// every run finished; a baseline written from the run must then pass its rerun.
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pocketflow/onnx.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

/// tools/benchmark.sh with this build's binary, one thread (ctest runs two tests at a time).
Result benchmark(const std::string& args, const std::string& env, const testing::TempDir& dir) {
    return shell(fmt::format("cd '{}' && {} POCKETFLOW='{}' '{}/tools/benchmark.sh' {}",
                             dir.path().string(), env, POCKETFLOW_CLI, POCKETFLOW_SOURCE_DIR, args),
                 dir);
}

void expect_all_finished(const fs::path& results) {
    const json r = json::parse(read_file(results));
    for (const auto& run : r["runs"]) {
        EXPECT_EQ(run["status"], "ok") << run.dump();
    }
}

TEST(BenchmarkTest, Cifar10SuiteOnGeneratedBatches) {
    testing::TempDir dir;
    // CIFAR-10's binary format: records of a label byte and 3x32x32 pixels, five training
    // batches and a test batch.
    fs::create_directories(dir.path() / "cifar");
    std::mt19937 rng(5);
    auto write_batch = [&](const std::string& name, int records) {
        std::string bytes;
        for (int i = 0; i < records; ++i) {
            bytes += static_cast<char>(i % 10);
            for (int p = 0; p < 3072; ++p) {
                bytes += static_cast<char>((rng() % 64) + 16 * (i % 10));
            }
        }
        write_file_atomic(dir.path() / "cifar" / name, bytes);
    };
    for (int b = 1; b <= 5; ++b) {
        write_batch(fmt::format("data_batch_{}.bin", b), 8);
    }
    write_batch("test_batch.bin", 20);
    const std::string env = "PF_CIFAR10='" + dir.file("cifar") + "'";
    const std::string small =
        "--threads 1 --set train.epochs=1 --set data.batch_size=8 --set data.train_limit=16 "
        "--set train.log_every=1";
    Result gated = benchmark("cifar10 --out bench " + small, env, dir);
    // Noise scores far below PocketFlow's reference accuracies: the gate fails on top-1 only.
    EXPECT_EQ(gated.code, 1) << gated.out << gated.err;
    expect_all_finished(dir.path() / "bench" / "results.json");
    for (const char* run :
         {"resnet20_base", "resnet56_base", "resnet56_prune2.5x", "resnet56_prune3.3x"}) {
        EXPECT_NE(gated.out.find(run), std::string::npos) << gated.out;
    }
    EXPECT_NE(gated.out.find("REGRESSED"), std::string::npos);
    int macs_ok = 0;
    std::istringstream table(gated.out);
    for (std::string line; std::getline(table, line);) {
        if (line.find("macs") != std::string::npos) {
            EXPECT_NE(line.find(" ok"), std::string::npos) << line;  // 2.5x and 3.3x reached
            ++macs_ok;
        }
    }
    EXPECT_EQ(macs_ok, 2) << gated.out;
    // A baseline written from this run passes the rerun (nothing is redone).
    fs::copy_file(fs::path(POCKETFLOW_SOURCE_DIR) / "configs/benchmarks/cifar10_baseline.json",
                  dir.path() / "mine.json");
    Result update =
        benchmark("cifar10 --out bench --baseline mine.json --update-baseline " + small, env, dir);
    ASSERT_EQ(update.code, 0) << update.out << update.err;
    const json mine = json::parse(read_file(dir.path() / "mine.json"));
    EXPECT_EQ(mine["limits"]["max_drop"]["top1"], 0.3);  // the suite's limits are kept
    EXPECT_EQ(mine["runs"].size(), 4u);
    Result rerun = benchmark("cifar10 --out bench --baseline mine.json " + small, env, dir);
    EXPECT_EQ(rerun.code, 0) << rerun.out << rerun.err;
    EXPECT_NE(rerun.err.find("was finished"), std::string::npos) << rerun.err;
    // Unset data: the runs fail, named, and so does the gate.
    Result nodata = benchmark("cifar10 --out elsewhere " + small, "PF_CIFAR10=/nonexistent", dir);
    EXPECT_EQ(nodata.code, 1);
    EXPECT_NE(nodata.out.find("status"), std::string::npos) << nodata.out;
    Result unknown = benchmark("cifar11", "", dir);
    EXPECT_EQ(unknown.code, 2);
    EXPECT_NE(unknown.err.find("no suite 'cifar11'"), std::string::npos) << unknown.err;
}

TEST(BenchmarkTest, ImagenetSuiteOnAGeneratedImageFolder) {
    testing::TempDir dir;
    // root/{train,val}/<class>/*.png and one ONNX model per architecture of the suite.
    const std::vector<std::string> classes = {"n01", "n02", "n03"};
    for (size_t c = 0; c < classes.size(); ++c) {
        for (int i = 0; i < 4; ++i) {
            const auto shade = static_cast<uint8_t>(40 + 60 * c + i);
            testing::write_png(
                dir.path() / "imagenet" / "train" / classes[c] / fmt::format("{}.png", i), 40 + i,
                36, shade);
            testing::write_png(
                dir.path() / "imagenet" / "val" / classes[c] / fmt::format("{}.png", i), 36, 44,
                shade);
        }
    }
    fs::create_directories(dir.path() / "models");
    for (const char* arch : {"resnet18", "resnet50", "mobilenet_v1", "mobilenet_v2"}) {
        export_onnx(dir.file(fmt::format("models/{}.onnx", arch)),
                    build_zoo_model(arch, 3, {3, 32, 32}, 1), ModelMeta{arch, "", {}, {}});
    }
    const std::string env = "PF_IMAGENET='" + dir.file("imagenet") + "' PF_IMAGENET_MODELS='" +
                            dir.file("models") + "'";
    Result gated = benchmark(
        "imagenet --out bench --threads 1 --set data.image_size=32 --set data.resize=36 "
        "--set data.eval_batch_size=4 --set pipeline.0.calibration_images=8",
        env, dir);
    EXPECT_EQ(gated.code, 1) << gated.out << gated.err;  // random weights: below the reference
    expect_all_finished(dir.path() / "bench" / "results.json");
    for (const char* run :
         {"resnet18_int8", "resnet50_int8", "mobilenet_v1_int8", "mobilenet_v2_int8"}) {
        EXPECT_NE(gated.out.find(run), std::string::npos) << gated.out;
        const json s = json::parse(read_file(dir.path() / "bench" / run / "summary.json"));
        EXPECT_EQ(s["stages"][0]["learner"], "uniform_quantization");
        EXPECT_EQ(s["samples"], 12);  // the val split: 3 classes x 4 images
    }
}

}  // namespace
}  // namespace pocketflow
