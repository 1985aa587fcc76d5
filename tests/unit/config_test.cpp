// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/config.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "pocketflow/cpu.h"
#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/regression.h"
#include "pocketflow/sweep.h"
#include "pocketflow/tune.h"
#include "pocketflow/util.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

using testing::expect_error;

const char* kSynthetic = "data: {dataset: synthetic}\nmodel: {arch: lenet5}\n";

TEST(ConfigTest, DefaultsAreFilledAndResolved) {
    Job job = parse_job(kSynthetic, "job.yaml");
    EXPECT_EQ(job.name, "job");
    EXPECT_EQ(job.model.arch, "lenet5");
    EXPECT_EQ(job.data.batch_size, 128);
    EXPECT_EQ(job.train.optimizer.name, "sgd");
    ASSERT_EQ(job.pipeline.size(), 1u);
    EXPECT_EQ(job.pipeline[0].learner, "full_precision");
    // The resolved tree carries defaults too, so a run can be repeated exactly.
    EXPECT_EQ(job.resolved["train"]["epochs"].as<int>(), 1);
    EXPECT_EQ(job.resolved["data"]["dataset"].as<std::string>(), "synthetic");
}

TEST(ConfigTest, FashionMnistRootDefaultsToDebianPackage) {
    if (!std::filesystem::is_directory("/usr/share/datasets/fashion-mnist")) {
        GTEST_SKIP() << "dataset-fashion-mnist not installed";
    }
    Job job = parse_job("model: {arch: lenet5}\n", "job.yaml");
    EXPECT_EQ(job.data.root, "/usr/share/datasets/fashion-mnist");
    ASSERT_EQ(job.data.mean.size(), 1u);
}

TEST(ConfigTest, UnknownKeySuggestsNearestAndNamesLine) {
    expect_error<ConfigError>(
        [] {
            parse_job("model: {arch: lenet5}\ndata: {dataset: synthetic}\ntrain:\n  epohcs: 3\n",
                      "a.yaml");
        },
        "a.yaml:4:3: unknown key train.epohcs (did you mean 'epochs'?)");
}

TEST(ConfigTest, WrongTypeNamesKeyPathAndValue) {
    expect_error<ConfigError>(
        [] {
            parse_job("model: {arch: lenet5}\ndata: {dataset: synthetic, batch_size: many}\n",
                      "b.yaml");
        },
        "b.yaml:2:40: failed to read data.batch_size with 'many': expected an integer");
}

TEST(ConfigTest, OutOfRangeValue) {
    expect_error<ConfigError>(
        [] { parse_job(std::string(kSynthetic) + "train: {epochs: 0}\n", "c.yaml"); },
        "failed to read train.epochs with '0': must be in [1, 100000]");
    expect_error<ConfigError>(
        [] { parse_job(std::string(kSynthetic) + "train: {optimizer: {lr: -1}}\n", "c.yaml"); },
        "train.optimizer.lr with '-1': must be in (0, 100]");
}

TEST(ConfigTest, ChoicesSuggest) {
    expect_error<ConfigError>(
        [] { parse_job("model: {arch: lenet5}\ndata: {dataset: cifar11}\n", "d.yaml"); },
        "did you mean 'cifar10'?");
    expect_error<ConfigError>(
        [] { parse_job("data: {dataset: synthetic}\nmodel: {arch: resnet21}\n", "d.yaml"); },
        "unknown architecture (did you mean 'resnet20'?)");
}

TEST(ConfigTest, MissingFilesAreErrorsBeforeWork) {
    expect_error<ConfigError>(
        [] {
            parse_job("data: {dataset: synthetic}\nmodel: {path: /nonexistent/m.pfm}\n", "e.yaml");
        },
        "e.yaml:2:15: failed to read model.path with '/nonexistent/m.pfm': no such file");
    expect_error<ConfigError>(
        [] {
            parse_job("model: {arch: lenet5}\ndata: {dataset: cifar10, root: /nonexistent}\n",
                      "e.yaml");
        },
        "failed to read data.root with '/nonexistent': no such directory");
    expect_error<InputError>([] { load_job("/nonexistent/job.yaml"); }, "no such file");
}

TEST(ConfigTest, YamlSyntaxErrorHasLocation) {
    expect_error<ConfigError>([] { parse_job("train: {epochs: 3\n", "f.yaml"); }, "f.yaml:");
}

TEST(ConfigTest, ModelNeedsExactlyOneSource) {
    expect_error<ConfigError>(
        [] { parse_job("data: {dataset: synthetic}\nmodel: {}\n", "g.yaml"); },
        "give exactly one of model.arch, model.path or model.onnx");
}

TEST(ConfigTest, OverridesApplyAndAreValidated) {
    Job job =
        parse_job(kSynthetic, "h.yaml", {"train.epochs=3", "data.augment.hflip=true", "name=x"});
    EXPECT_EQ(job.train.epochs, 3);
    EXPECT_TRUE(job.data.augment.hflip);
    EXPECT_EQ(job.name, "x");
    expect_error<ConfigError>([] { parse_job(kSynthetic, "h.yaml", {"train.epochs=-2"}); },
                              "--set train.epochs: failed to read train.epochs with '-2'");
    expect_error<ConfigError>(
        [] { parse_job(kSynthetic, "h.yaml", {"train.epoch=2"}); },
        "--set train.epoch: unknown key train.epoch (did you mean 'epochs'?)");
    expect_error<ConfigError>([] { parse_job(kSynthetic, "h.yaml", {"noequals"}); },
                              "expected key.path=value");
}

TEST(ConfigTest, PipelineOverrideByIndex) {
    Job job =
        parse_job(std::string(kSynthetic) + "pipeline: [{learner: full_precision, epochs: 2}]\n",
                  "i.yaml", {"pipeline.0.epochs=4"});
    EXPECT_EQ(job.pipeline[0].options["epochs"].as<int>(), 4);
    expect_error<ConfigError>(
        [] {
            parse_job(std::string(kSynthetic) + "pipeline: [{learner: full_precision}]\n", "i.yaml",
                      {"pipeline.3.epochs=4"});
        },
        "not an index of the list");
}

TEST(ConfigTest, StageWithoutLearner) {
    expect_error<ConfigError>(
        [] { parse_job(std::string(kSynthetic) + "pipeline: [{epochs: 1}]\n", "j.yaml"); },
        "pipeline[0]: each stage needs `learner: <name>`");
}

TEST(RegistryTest, BuiltinsAndUnknownNames) {
    const auto& r = builtin_registry();
    auto names = r.names();
    EXPECT_NE(std::find(names.begin(), names.end(), "full_precision"), names.end());
    expect_error<ConfigError>([&] { r.get("full_precison"); }, "did you mean 'full_precision'?");
    LearnerRegistry local;
    register_builtin_learners(local);
    EXPECT_THROW(register_builtin_learners(local), Error);  // double registration is refused
}

TEST(RegistryTest, ChannelPruningBudgetErrors) {
    auto create = [](const std::string& stage) {
        Job job = parse_job(std::string(kSynthetic) + "pipeline: [" + stage + "]\n", "cp.yaml");
        return builtin_registry().get("channel_pruning").create(job.pipeline[0], job);
    };
    expect_error<ConfigError>(
        [&] { create("{learner: channel_pruning, flops_target: 1.5}"); },
        "failed to read pipeline[0].flops_target with '1.5': must be in [0, 1]");
    expect_error<ConfigError>([&] { create("{learner: channel_pruning}"); }, "give flops_target");
    expect_error<ConfigError>([&] { create("{learner: channel_pruning, ratios: auto}"); },
                              "auto searches ratios under a budget: give flops_target too");
    EXPECT_NO_THROW(create(
        "{learner: channel_pruning, flops_target: 0.5, ratios: auto, search: {episodes: 10}}"));
    expect_error<ConfigError>(
        [&] {
            Job job = parse_job(std::string(kSynthetic) +
                                    "pipeline: [{learner: discr_channel_pruning, flops_target: "
                                    "0.5, ratios: auto}]\n",
                                "dcp.yaml");
            builtin_registry().get("discr_channel_pruning").create(job.pipeline[0], job);
        },
        "auto is available for channel_pruning only");
    expect_error<ConfigError>(
        [&] {
            create(
                "{learner: channel_pruning, flops_target: 0.5, ratios: auto, search: "
                "{episode: 10}}");
        },
        "did you mean 'episodes'");
    expect_error<ConfigError>(
        [&] { create("{learner: channel_pruning, flops_target: 0.5, ratios: [0.5]}"); },
        "not both");
    expect_error<ConfigError>(
        [&] { create("{learner: channel_pruning, flops_target: 0.5, criterion: l3}"); },
        "must be one of: lasso, l1, l2, fpgm, bn_scale");
    EXPECT_NO_THROW(create("{learner: channel_pruning, flops_target: 0.5, exclude: [fc*]}"));
    EXPECT_NO_THROW(
        create("{learner: channel_pruning, flops_target: 0.5, channel_multiple: auto, "
               "target: neon}"));
    EXPECT_NO_THROW(create("{learner: channel_pruning, flops_target: 0.5, channel_multiple: 8}"));
    expect_error<ConfigError>(
        [&] { create("{learner: channel_pruning, flops_target: 0.5, channel_multiple: fast}"); },
        "pipeline[0].channel_multiple");
    expect_error<ConfigError>(
        [&] { create("{learner: channel_pruning, flops_target: 0.5, target: avx3}"); },
        "must be one of: native, avx512vnni, avx512, avx2, neon, generic");
    expect_error<ConfigError>([&] { create("{learner: channel_pruning, flops_targte: 0.5}"); },
                              "did you mean 'flops_target'");
}

TEST(CpuTargetTest, BlocksFollowTheSimdWidth) {
    EXPECT_EQ(cpu_target("avx512").channel_block, 16);
    EXPECT_EQ(cpu_target("avx2").channel_block, 8);
    EXPECT_EQ(cpu_target("neon").channel_block, 4);
    EXPECT_EQ(cpu_target("generic").channel_block, 4);
    CpuTarget native = cpu_target("native");
    EXPECT_GE(native.channel_block, 4);
    EXPECT_NE(native.description.find("this machine"), std::string::npos);
    EXPECT_THROW(cpu_target("avx3"), std::invalid_argument);
}

TEST(RegistryTest, LearnerValidatesItsOwnOptions) {
    Job job = parse_job(
        std::string(kSynthetic) + "pipeline: [{learner: full_precision, epoch: 2}]\n", "k.yaml");
    expect_error<ConfigError>(
        [&] { builtin_registry().get("full_precision").create(job.pipeline[0], job); },
        "k.yaml:3:38: unknown key pipeline[0].epoch (did you mean 'epochs'?)");
}

TEST(ConfigFilesTest, EveryShippedConfigParses) {
    namespace fs = std::filesystem;
    fs::path dir = fs::path(POCKETFLOW_SOURCE_DIR) / "configs";
    int count = 0;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        if (e.path().extension() != ".yaml") {
            continue;
        }
        SCOPED_TRACE(e.path().string());
        if (e.path().stem().string().size() > 6 &&
            e.path().stem().string().rfind("_space") == e.path().stem().string().size() - 6) {
            // A `pocketflow tune` search space, not a job.
            const TuneSpace space = load_tune_space(e.path().string());
            EXPECT_FALSE(space.params.empty());
            ++count;
            continue;
        }
        const std::string stem = e.path().stem().string();
        const bool suite = stem.size() > 6 && stem.rfind("_suite") == stem.size() - 6;
        if (suite || (stem.size() > 6 && stem.rfind("_sweep") == stem.size() - 6)) {
            // A `pocketflow sweep` file (a benchmark suite: named jobs), not a job.
            SweepOptions sweep;
            load_sweep_file(e.path().string(), sweep);
            const auto runs = sweep_runs(sweep);
            EXPECT_FALSE(runs.empty());
            if (suite) {
                // Each job file exists (parsed as a job below) and the committed baseline
                // names every run of the suite.
                const std::string name = stem.substr(0, stem.size() - 6);
                const fs::path baseline = e.path().parent_path() / (name + "_baseline.json");
                ASSERT_TRUE(fs::exists(baseline)) << baseline;
                const RunMetrics metrics = load_run_metrics(baseline.string());
                EXPECT_FALSE(load_baseline_limits(baseline.string()).empty());
                for (const auto& run : runs) {
                    EXPECT_TRUE(fs::exists(run.config)) << run.config;
                    EXPECT_EQ(metrics.count(run.name), 1u) << run.name << " in " << baseline;
                }
                EXPECT_EQ(metrics.size(), runs.size());
            }
            ++count;
            continue;
        }
        // Data roots may be absent on this machine (CIFAR, ImageNet): parse with synthetic data
        // then.
        std::string text = read_file(e.path());
        std::vector<std::string> overrides;
        if (text.find("fashion_mnist") == std::string::npos ||
            !fs::exists("/usr/share/datasets/fashion-mnist")) {
            overrides = {"data.dataset=synthetic", "data.root=''"};
        }
        // Compression jobs start from a trained model that a previous job writes: stand in a zoo
        // model.
        YAML::Node tree = YAML::Load(text);
        for (const char* key : {"path", "onnx"}) {
            if (tree["model"] && tree["model"][key] &&
                !fs::exists(tree["model"][key].as<std::string>())) {
                overrides.push_back(fmt::format("model.{}=", key));
                overrides.push_back("model.arch=resnet20");
            }
        }
        Job job = parse_job(text, e.path().string(), overrides);
        for (const auto& stage : job.pipeline) {
            EXPECT_NO_THROW(builtin_registry().get(stage.learner).create(stage, job));
        }
        ++count;
    }
    EXPECT_GE(count, 2);
}

TEST(UtilTest, AtomicWriteReplacesWholeFile) {
    testing::TempDir dir;
    std::string path = dir.file("sub/out.txt");
    write_file_atomic(path, "first");
    write_file_atomic(path, "second");
    EXPECT_EQ(read_file(path), "second");
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(dir.path() / "sub")) {
        (void)e;
        ++files;
    }
    EXPECT_EQ(files, 1);  // no temporary left behind
}

TEST(UtilTest, ShellQuoteAndShorten) {
    EXPECT_EQ(shell_quote("a b"), "'a b'");
    EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
    EXPECT_EQ(shorten("short"), "short");
    const std::string s = shorten(std::string(1000, 'x'), 20);
    EXPECT_LT(s.size(), 60u);
    EXPECT_NE(s.find("..."), std::string::npos);  // the elided middle
    EXPECT_NE(s.find("(1000 characters)"), std::string::npos);
}

TEST(UtilTest, NearestMatch) {
    EXPECT_EQ(nearest_match("epohcs", {"epochs", "optimizer"}), "epochs");
    EXPECT_EQ(nearest_match("zzzzzzzz", {"epochs", "optimizer"}), "");
    EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
}

}  // namespace
}  // namespace pocketflow
