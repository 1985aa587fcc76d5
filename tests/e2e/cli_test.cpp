// SPDX-License-Identifier: Apache-2.0
// End-to-end tests of the `pocketflow` binary on tiny synthetic jobs.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <torch/torch.h>

#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"

#include "e2e/cli_util.h"
#include "support/test_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(CliTest, VersionHelpAndLearners) {
    testing::TempDir dir;
    Result v = cli("--version", dir);
    EXPECT_EQ(v.code, 0);
    EXPECT_NE(v.out.find("pocketflow"), std::string::npos);
    Result h = cli("train --help", dir);
    EXPECT_EQ(h.code, 0);
    EXPECT_NE(h.out.find("--config"), std::string::npos);
    Result l = cli("learners", dir);
    EXPECT_EQ(l.code, 0);
    EXPECT_NE(l.out.find("full_precision"), std::string::npos);
    Result bad = cli("train --no-such-flag", dir);
    EXPECT_EQ(bad.code, 2);
    Result none = cli("", dir);
    EXPECT_EQ(none.code, 2);
}

TEST(CliTest, InfoOnZooArchitecture) {
    testing::TempDir dir;
    Result r = cli("--json info --arch resnet20 --input 3x32x32 --num-classes 10", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    json j = json::parse(r.out);
    EXPECT_NEAR(j["macs"].get<double>() / 40.81e6, 1.0, 0.01);
    EXPECT_GT(j["layers"].size(), 60u);
    Result table = cli("info --arch lenet5 --input 1x28x28", dir);
    ASSERT_EQ(table.code, 0);
    EXPECT_NE(table.out.find("conv1"), std::string::npos);
    EXPECT_NE(table.out.find("61.71K params"), std::string::npos);
    Result bad = cli("info --arch lenet5 --input 1x28", dir);
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("expected CxHxW"), std::string::npos);
}

TEST(CliTest, TrainEvalInfoEndToEnd) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    Result r = cli("--json train --config job.yaml --set output_dir=run", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    json s = json::parse(r.out);
    for (const char* key : {"run_dir", "model", "top1", "top5", "params", "macs", "stages"}) {
        EXPECT_TRUE(s.contains(key)) << key;
    }
    EXPECT_GT(s["top1"].get<double>(), 60.0);
    EXPECT_EQ(s["stages"].size(), 1u);
    for (const char* f :
         {"resolved_config.yaml", "log.txt", "metrics.jsonl", "model.pfm", "summary.json"}) {
        EXPECT_TRUE(fs::exists(dir.path() / "run" / f)) << f;
    }
    EXPECT_EQ(json::parse(read_file(dir.path() / "run" / "summary.json")), s);
    EXPECT_NE(read_file(dir.path() / "run" / "metrics.jsonl").find("\"kind\":\"epoch\""),
              std::string::npos);
    // The resolved config is a complete job: running it again parses.
    EXPECT_NE(read_file(dir.path() / "run" / "resolved_config.yaml").find("weight_decay"),
              std::string::npos);

    Result e = cli("--json eval --model run/model.pfm --config job.yaml", dir);
    ASSERT_EQ(e.code, 0) << e.err;
    json ej = json::parse(e.out);
    EXPECT_DOUBLE_EQ(ej["top1"].get<double>(), s["top1"].get<double>());
    EXPECT_EQ(ej["samples"].get<int64_t>(), 128);
    for (const char* key : {"top1", "top5", "loss", "samples"}) {
        EXPECT_TRUE(ej.contains(key)) << key;
    }

    Result i = cli("--json info --model run/model.pfm", dir);
    ASSERT_EQ(i.code, 0) << i.err;
    EXPECT_EQ(json::parse(i.out)["params"], s["params"]);

    Result text = cli("train --config job.yaml --set output_dir=run2 --set train.epochs=1", dir);
    ASSERT_EQ(text.code, 0) << text.err;
    EXPECT_NE(text.out.find("top-1"), std::string::npos);
    EXPECT_NE(text.out.find("full_precision"), std::string::npos);
}

TEST(CliTest, BadInputExitsWithTwoAndAClearMessage) {
    testing::TempDir dir;
    write_file_atomic(dir.file("bad.yaml"), "model: {arch: lenet5}\ntrain:\n  epochs: -3\n");
    Result r = cli("train --config bad.yaml", dir);
    EXPECT_EQ(r.code, 2);
    EXPECT_NE(r.err.find("bad.yaml:3:11: failed to read train.epochs with '-3'"), std::string::npos)
        << r.err;
    EXPECT_EQ(r.err.find("backtrace"), std::string::npos);
    EXPECT_FALSE(fs::exists(dir.path() / "runs"));  // nothing started

    Result missing = cli("train --config nope.yaml", dir);
    EXPECT_EQ(missing.code, 2);
    EXPECT_NE(missing.err.find("no such file"), std::string::npos);

    write_file_atomic(dir.file("junk.pfm"), "garbage");
    Result e = cli("eval --model junk.pfm --set data.dataset=synthetic", dir);
    EXPECT_EQ(e.code, 2);
    EXPECT_NE(e.err.find("junk.pfm"), std::string::npos);

    write_file_atomic(dir.file("learner.yaml"),
                      std::string(kTinyJob) + "  - learner: chanel_pruning\n");
    Result l = cli("compress --config learner.yaml", dir);
    EXPECT_EQ(l.code, 2);
    EXPECT_NE(l.err.find("unknown learner 'chanel_pruning'"), std::string::npos) << l.err;
}

TEST(CliTest, ResumeAfterInterruptionMatchesUninterruptedRun) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    Result full = cli("--json train --config job.yaml --set output_dir=full", dir);
    ASSERT_EQ(full.code, 0) << full.err;

    Result stopped = cli("train --config job.yaml --set output_dir=part --stop-after-steps 5", dir);
    EXPECT_EQ(stopped.code, 130) << stopped.err;
    EXPECT_NE(stopped.err.find("--resume"), std::string::npos);
    EXPECT_FALSE(fs::exists(dir.path() / "part" / "model.pfm"));
    Result changed =
        cli("train --config job.yaml --set output_dir=part --set train.epochs=5 --resume", dir);
    EXPECT_EQ(changed.code, 2);
    EXPECT_NE(changed.err.find("differs from the run's resolved_config.yaml"), std::string::npos);
    // Nor does a fresh run of another job take the directory (a later --resume would mix the
    // two); its files are left as they were.
    const std::string config_before = read_file(dir.file("part/resolved_config.yaml"));
    Result other = cli("train --config job.yaml --set output_dir=part --set train.epochs=5", dir);
    EXPECT_EQ(other.code, 2);
    EXPECT_NE(other.err.find("holds a run of another job"), std::string::npos) << other.err;
    EXPECT_EQ(read_file(dir.file("part/resolved_config.yaml")), config_before);
    Result resumed = cli("--json train --config job.yaml --set output_dir=part --resume", dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    EXPECT_NE(resumed.err.find("resumed from"), std::string::npos);

    ModelFile a = load_model((dir.path() / "full" / "model.pfm").string());
    ModelFile b = load_model((dir.path() / "part" / "model.pfm").string());
    ASSERT_EQ(a.graph.nodes().size(), b.graph.nodes().size());
    for (size_t i = 0; i < a.graph.nodes().size(); ++i) {
        for (const auto& [k, t] : a.graph.nodes()[i].params) {
            EXPECT_TRUE(torch::equal(t, b.graph.nodes()[i].params.at(k)))
                << a.graph.nodes()[i].name << "." << k;
        }
    }
    EXPECT_DOUBLE_EQ(json::parse(full.out)["top1"].get<double>(),
                     json::parse(resumed.out)["top1"].get<double>());
}

TEST(CliTest, FullPrecisionDistilsOnlyFromATeacherFile) {
    // The stage's input is the untrained network: it is no teacher. A teacher file is.
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    const std::string args =
        "train --config job.yaml --set train.epochs=1 --set distillation.enabled=true ";
    Result own = cli(args + "--set output_dir=a", dir);
    ASSERT_EQ(own.code, 0) << own.err;
    EXPECT_NE(own.err.find("trains without distillation"), std::string::npos) << own.err;
    Result file = cli(args + "--set output_dir=b --set distillation.teacher=a/model.pfm", dir);
    ASSERT_EQ(file.code, 0) << file.err;
    EXPECT_EQ(file.err.find("trains without distillation"), std::string::npos) << file.err;
}

TEST(CliTest, ExportImportAndBench) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), std::string(kTinyJob) + "export: {onnx: true}\n");
    Result r = cli("--json train --config job.yaml --set output_dir=run --set train.epochs=1", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    json s = json::parse(r.out);
    ASSERT_TRUE(s.contains("onnx"));
    EXPECT_TRUE(fs::exists(dir.path() / "run" / "model.onnx"));

    // The exported ONNX model evaluates like the .pfm it came from.
    Result e = cli("--json eval --model run/model.onnx --config job.yaml", dir);
    ASSERT_EQ(e.code, 0) << e.err;
    EXPECT_NEAR(json::parse(e.out)["top1"].get<double>(), s["top1"].get<double>(), 1.0);

    Result x = cli("--json export --model run/model.pfm -o out.onnx --opset 11 --batch 1", dir);
    ASSERT_EQ(x.code, 0) << x.err;
    EXPECT_TRUE(fs::exists(dir.path() / "out.onnx"));
    Result same = cli("export --model run/model.onnx", dir);
    EXPECT_EQ(same.code, 2);
    EXPECT_NE(same.err.find("is the input file"), std::string::npos);
    const auto input_bytes = fs::file_size(dir.path() / "run" / "model.onnx");
    for (const char* spelling : {"./run/model.onnx", "run/../run/model.onnx"}) {
        Result other = cli(std::string("export --model run/model.onnx -o ") + spelling, dir);
        EXPECT_EQ(other.code, 2) << spelling;
        EXPECT_NE(other.err.find("is the input file"), std::string::npos) << other.err;
    }
    EXPECT_EQ(fs::file_size(dir.path() / "run" / "model.onnx"), input_bytes);

    // An imported ONNX model is a job's starting point like any other.
    Result again =
        cli("--json train --config job.yaml --set output_dir=run2 --set train.epochs=1 "
            "--set model.arch='' --set model.onnx=run/model.onnx",
            dir);
    ASSERT_EQ(again.code, 0) << again.err;
    EXPECT_EQ(json::parse(again.out)["params"], s["params"]);

    Result b = cli(
        "--json bench --model run/model.pfm --model run/model.onnx --batch 1,4 --runtime libtorch "
        "--warmup 1 --repeat 3",
        dir);
    ASSERT_EQ(b.code, 0) << b.err;
    json bj = json::parse(b.out);
    ASSERT_EQ(bj["results"].size(), 4u);
    for (const auto& row : bj["results"]) {
        for (const char* key :
             {"median_ms", "p90_ms", "params", "macs", "file_bytes", "speedup", "macs_ratio"}) {
            EXPECT_TRUE(row.contains(key)) << key;
        }
        EXPECT_GT(row["median_ms"].get<double>(), 0.0);
    }
    EXPECT_DOUBLE_EQ(bj["results"][0]["speedup"].get<double>(), 1.0);
    Result bad = cli("bench --model run/model.pfm --batch 0", dir);
    EXPECT_EQ(bad.code, 2);
    if (!ort_runner_path().empty()) {
        Result checked = cli("--json export --model run/model.onnx -o checked.onnx --check", dir);
        ASSERT_EQ(checked.code, 0) << checked.err;
        json cj = json::parse(checked.out);
        EXPECT_EQ(cj["check"], "passed");
        EXPECT_LE(cj["max_rel_diff_import"].get<double>(), 1e-4);
        // Paths reach ONNX Runtime's runner through a shell: quotes in them are safe.
        fs::copy_file(dir.path() / "run" / "model.onnx", dir.path() / "it's.onnx");
        Result quoted = cli("--json export --model \"it's.onnx\" -o q.onnx --check", dir);
        ASSERT_EQ(quoted.code, 0) << quoted.err;
        Result both =
            cli("--json bench --model run/model.pfm --model run/model.onnx --batch 2 --warmup 1 "
                "--repeat 2",
                dir);
        ASSERT_EQ(both.code, 0) << both.err;
        json rows = json::parse(both.out)["results"];
        ASSERT_EQ(rows.size(), 4u);  // two models in libtorch and in onnxruntime (interleaved)
        EXPECT_EQ(rows[2]["runtime"], "onnxruntime");
        EXPECT_EQ(rows[3]["model"], "run/model.onnx");
        EXPECT_DOUBLE_EQ(rows[3]["macs_ratio"].get<double>(), 1.0);
    }
    // Models compared side by side must take the same input.
    Result other =
        cli("--json train --config job.yaml --set output_dir=wide --set train.epochs=1 "
            "--set 'data.synthetic.shape=[1, 16, 16]'",
            dir);
    ASSERT_EQ(other.code, 0) << other.err;
    Result mismatch = cli("bench --model run/model.pfm --model wide/model.pfm --batch 1", dir);
    EXPECT_EQ(mismatch.code, 2);
    EXPECT_NE(mismatch.err.find("takes input"), std::string::npos) << mismatch.err;
}

TEST(CliTest, ChannelPruningPipelineEndToEnd) {
    testing::TempDir dir;
    // Train a base model, then prune it to half the MACs with distillation, export and bench it.
    write_file_atomic(dir.file("job.yaml"), std::string(kTinyJob));
    Result base =
        cli("--json train --config job.yaml --set output_dir=base --set model.arch=resnet20", dir);
    ASSERT_EQ(base.code, 0) << base.err;
    std::string prune_job =
        std::string(kTinyJob) + "distillation: {enabled: true}\nexport: {onnx: true}\n";
    write_file_atomic(dir.file("prune.yaml"), prune_job);
    Result r =
        cli("--json compress --config prune.yaml --set output_dir=pruned --set model.arch= "
            "--set model.path=base/model.pfm "
            "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.5, criterion: lasso, "
            "samples: 64, target: avx512, "
            "finetune_epochs: 1, finetune_lr: 0.02}]'",
            dir);
    ASSERT_EQ(r.code, 0) << r.err;
    json s = json::parse(r.out);
    json b = json::parse(base.out);
    EXPECT_NEAR(s["macs"].get<double>() / b["macs"].get<double>(), 0.5, 0.02);
    EXPECT_LT(s["file_bytes"].get<double>(), 0.7 * b["file_bytes"].get<double>());
    const json& stage = s["stages"][0];
    EXPECT_EQ(stage["learner"], "channel_pruning");
    EXPECT_FALSE(stage["layers"].empty());
    EXPECT_GT(s["top1"].get<double>(),
              30.0);  // above chance (25%) after a 1-epoch fine-tune of a tiny model
    EXPECT_TRUE(fs::exists(dir.path() / "pruned" / "model.onnx"));
    Result info = cli("--json info --model pruned/model.pfm", dir);
    ASSERT_EQ(info.code, 0);
    EXPECT_EQ(json::parse(info.out)["macs"], s["macs"]);
    if (!ort_runner_path().empty()) {
        Result checked = cli("--json export --model pruned/model.pfm -o p.onnx --check", dir);
        ASSERT_EQ(checked.code, 0) << checked.err;
    }
    Result bench = cli(
        "--json bench --model base/model.pfm --model pruned/model.pfm --batch 4 --runtime libtorch "
        "--warmup 1 --repeat 3",
        dir);
    ASSERT_EQ(bench.code, 0) << bench.err;
    json rows = json::parse(bench.out)["results"];
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_NEAR(rows[1]["macs_ratio"].get<double>(), 2.0, 0.1);
    EXPECT_GT(rows[1]["speedup"].get<double>(), 0.0);
    EXPECT_EQ(stage["channel_multiple"], 16);  // auto for the avx512 target
    EXPECT_EQ(stage["target"], "avx512");
    // A BN-folded import (what an eval-mode export gives) gets its BatchNorm back for training
    // (model.restore_bn: auto), and prunes like the model it came from.
    Result folded = cli("export --model base/model.pfm -o folded.onnx", dir);
    ASSERT_EQ(folded.code, 0) << folded.err;
    Result imported =
        cli("--json compress --config prune.yaml --set output_dir=imported --set model.arch= "
            "--set model.onnx=folded.onnx "
            "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.5, criterion: l1, "
            "target: avx2, finetune_epochs: 3, finetune_lr: 0.02}]'",
            dir);
    ASSERT_EQ(imported.code, 0) << imported.err;
    EXPECT_NE(imported.err.find("re-inserted BatchNorm after 21 convs"), std::string::npos)
        << imported.err;
    json is = json::parse(imported.out);
    EXPECT_EQ(is["stages"][0]["channel_multiple"], 8);
    EXPECT_NEAR(is["macs"].get<double>() / b["macs"].get<double>(), 0.5, 0.02);
    // Above chance (25%). Half the channels by L1 leave this tiny model at chance before
    // fine-tuning, and the re-inserted BatchNorms' running statistics need more than one epoch to
    // follow (1 epoch: 37.5% with LibTorch 1.13, 26.6% with 2.6; 3 epochs: 50% and 53%).
    EXPECT_GT(is["top1"].get<double>(), 30.0);
    // DCP through the CLI: the same budget, a smaller model that exports and runs in ONNX Runtime.
    Result dcp =
        cli("--json compress --config prune.yaml --set output_dir=dcp --set model.arch= "
            "--set model.path=base/model.pfm "
            "--set 'pipeline=[{learner: discr_channel_pruning, flops_target: 0.5, target: avx2, "
            "samples: 32, batch_size: 16, block_steps: 4, layer_steps: 1, finetune_epochs: 1, "
            "finetune_lr: 0.02}]'",
            dir);
    ASSERT_EQ(dcp.code, 0) << dcp.err;
    json ds = json::parse(dcp.out);
    EXPECT_NEAR(ds["macs"].get<double>() / b["macs"].get<double>(), 0.5, 0.02);
    EXPECT_EQ(ds["stages"][0]["learner"], "discr_channel_pruning");
    EXPECT_EQ(ds["stages"][0]["auxiliary"].size(), 3u);
    EXPECT_TRUE(fs::exists(dir.path() / "dcp" / "model.onnx"));
    if (!ort_runner_path().empty()) {
        Result checked = cli("--json export --model dcp/model.pfm -o d.onnx --check", dir);
        ASSERT_EQ(checked.code, 0) << checked.err;
    }
    Result bad =
        cli("compress --config prune.yaml --set model.path=base/model.pfm --set model.arch= "
            "--set 'pipeline=[{learner: channel_pruning, ratios: [0.5, 0.5]}]'",
            dir);
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("prunable channel groups"), std::string::npos) << bad.err;
}

TEST(CliTest, UniformQuantizationEndToEnd) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), std::string(kTinyJob) + "export: {onnx: true}\n");
    Result base = cli("--json train --config job.yaml --set output_dir=base", dir);
    ASSERT_EQ(base.code, 0) << base.err;
    json b = json::parse(base.out);
    const std::string from_base = "--set model.arch= --set model.path=base/model.pfm ";
    // Post-training: seconds, no training, the int8 model close to the float one.
    Result ptq = cli("--json compress --config job.yaml --set output_dir=ptq " + from_base +
                         "--set 'pipeline=[{learner: uniform_quantization, mode: ptq, "
                         "calibration: mse, calibration_images: 64}]'",
                     dir);
    ASSERT_EQ(ptq.code, 0) << ptq.err;
    json p = json::parse(ptq.out);
    const json& stage = p["stages"][0];
    EXPECT_EQ(stage["mode"], "ptq");
    EXPECT_EQ(stage["bits"]["conv2"], "w8a8");
    EXPECT_EQ(stage["calibration_images"], 64);
    EXPECT_NEAR(p["top1"].get<double>(), b["top1"].get<double>(), 5.0);
    EXPECT_LT(p["file_bytes"].get<double>(), 0.3 * b["file_bytes"].get<double>());
    // eval simulates the int8 model: the same accuracy as the run measured.
    Result e = cli("--json eval --model ptq/model.pfm --config job.yaml", dir);
    ASSERT_EQ(e.code, 0) << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["top1"].get<double>(), p["top1"].get<double>());
    Result info = cli("--json info --model ptq/model.pfm", dir);
    ASSERT_EQ(info.code, 0) << info.err;
    json layers = json::parse(info.out)["layers"];
    int quantized_layers = 0;
    for (const auto& l : layers) {
        quantized_layers += l.value("weight_bits", 0) == 8 ? 1 : 0;
    }
    EXPECT_EQ(quantized_layers, 5);
    Result text_info = cli("info --model ptq/model.pfm", dir);
    EXPECT_NE(text_info.out.find("(±127)"), std::string::npos) << text_info.out;
    if (!ort_runner_path().empty()) {
        Result checked =
            cli("--json export --model ptq/model.pfm -o q.onnx --check --config job.yaml", dir);
        ASSERT_EQ(checked.code, 0) << checked.err;
        json c = json::parse(checked.out);
        EXPECT_EQ(c["check"], "passed");
        EXPECT_GE(c["agreement"].get<double>(), 0.98);
        EXPECT_EQ(c["check_samples"], 128);
    }
    // Pruning then quantization-aware training in one job: a pruned 4-bit model.
    Result chained =
        cli("--json compress --config job.yaml --set output_dir=chained " + from_base +
                "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.6, criterion: l1, "
                "channel_multiple: 1, finetune_epochs: 1}, {learner: uniform_quantization, bits: "
                "{default: 4, \"fc2\": {weights: 8, activations: 8}}, epochs: 1, lr: 0.01}]'",
            dir);
    ASSERT_EQ(chained.code, 0) << chained.err;
    json c = json::parse(chained.out);
    EXPECT_LT(c["macs"].get<double>(), 0.7 * b["macs"].get<double>());
    EXPECT_EQ(c["stages"][1]["bits"]["conv2"], "w4a4");
    EXPECT_EQ(c["stages"][1]["bits"]["fc2"], "w8a8");
    EXPECT_EQ(c["stages"][1]["bits"]["fc3"], "w8a8");  // the last linear keeps 8 bits
    EXPECT_GT(c["top1"].get<double>(), 40.0);          // above chance (25%)
    EXPECT_TRUE(fs::exists(dir.path() / "chained" / "model.onnx"));
    // Bad input: exit 2, the key path and the rule.
    Result bits9 = cli("compress --config job.yaml " + from_base +
                           "--set 'pipeline=[{learner: uniform_quantization, bits: 9}]'",
                       dir);
    EXPECT_EQ(bits9.code, 2);
    EXPECT_NE(bits9.err.find("pipeline[0].bits with 9: bits must be 2–8"), std::string::npos)
        << bits9.err;
    Result glob = cli("compress --config job.yaml " + from_base +
                          "--set 'pipeline=[{learner: uniform_quantization, bits: {\"layer3_*\": "
                          "4}}]'",
                      dir);
    EXPECT_EQ(glob.code, 2);
    EXPECT_NE(glob.err.find("pipeline[0].bits.layer3_*: the glob matches no conv or linear layer"),
              std::string::npos)
        << glob.err;
    Result late =
        cli("compress --config job.yaml --set model.arch= --set model.path=ptq/model.pfm "
            "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.5}]'",
            dir);
    EXPECT_EQ(late.code, 2);
    EXPECT_NE(late.err.find("prune before quantizing"), std::string::npos) << late.err;
    // An interrupted QAT run (learned step sizes) resumes to the same model.
    const std::string qat =
        "--set 'pipeline=[{learner: uniform_quantization, ranges: lsq, bits: "
        "{weights: 4, activations: 8}, epochs: 1, calibration_images: 64}]' ";
    Result whole =
        cli("--json compress --config job.yaml --set output_dir=qat " + from_base + qat, dir);
    ASSERT_EQ(whole.code, 0) << whole.err;
    Result cut = cli("compress --config job.yaml --set output_dir=qat_part " + from_base + qat +
                         "--stop-after-steps 5",
                     dir);
    EXPECT_EQ(cut.code, 130) << cut.err;
    Result resumed = cli("--json compress --config job.yaml --set output_dir=qat_part " +
                             from_base + qat + "--resume",
                         dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    ModelFile ma = load_model((dir.path() / "qat" / "model.pfm").string());
    ModelFile mb = load_model((dir.path() / "qat_part" / "model.pfm").string());
    ASSERT_EQ(ma.graph.nodes().size(), mb.graph.nodes().size());
    for (size_t i = 0; i < ma.graph.nodes().size(); ++i) {
        const Node& na = ma.graph.nodes()[i];
        for (const auto* group : {&na.params, &na.buffers}) {
            for (const auto& [k, t] : *group) {
                const auto& other =
                    group == &na.params ? mb.graph.nodes()[i].params : mb.graph.nodes()[i].buffers;
                EXPECT_TRUE(torch::equal(t, other.at(k))) << na.name << "." << k;
            }
        }
    }
    EXPECT_DOUBLE_EQ(json::parse(whole.out)["top1"].get<double>(),
                     json::parse(resumed.out)["top1"].get<double>());
}

TEST(CliTest, SearchedPruningRatiosEndToEnd) {
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    // Candidates are pruned as the stage prunes (LASSO + reconstruction here).
    const std::string search =
        from_base +
        "--set 'pipeline=[{learner: "
        "channel_pruning, flops_target: 0.7, ratios: auto, samples: 32, channel_multiple: 1, "
        "finetune_epochs: 0, search: {episodes: 8, warmup: 3, samples: 32}}]' ";
    Result r = cli("--json compress --config job.yaml --set output_dir=auto " + search, dir);
    ASSERT_EQ(r.code, 0) << r.err;
    json s = json::parse(r.out);
    const json& st = s["stages"][0];
    ASSERT_TRUE(st.contains("search")) << st.dump();
    EXPECT_EQ(st["search"]["episodes"], 8);
    const double best = st["search"]["best_val_top1"].get<double>();
    EXPECT_GT(best, 0.0);
    EXPECT_LE(best, 100.0);
    EXPECT_LE(st["search"]["best_macs_kept"].get<double>(), 0.7 + 1e-9);
    EXPECT_EQ(st["search"]["best_ratios"], st["ratios"]);  // the stage pruned what it found
    EXPECT_LE(st["macs_kept"].get<double>(), 0.72);        // the searched ratios, as pruned
    const std::string csv = read_file(dir.path() / "auto" / "search" / "stage0" / "episodes.csv");
    EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 9);  // header + 8 episodes
    double logged_best = -1;  // the best reward in the episode log is the one reported
    std::istringstream rows(csv.substr(csv.find('\n') + 1));
    for (std::string row; std::getline(rows, row);) {
        const size_t a = row.find(','), b = row.find(',', a + 1);
        logged_best = std::max(logged_best, std::stod(row.substr(a + 1, b - a - 1)));
    }
    // The agent's best is the log's; the stage keeps the better of it and the uniform ratios.
    EXPECT_NEAR(logged_best, st["search"]["agent_best_val_top1"].get<double>(), 1e-9);
    EXPECT_NEAR(best, std::max(logged_best, st["search"]["uniform_val_top1"].get<double>()), 1e-9);
    EXPECT_EQ(st["search"]["chosen"],
              logged_best >= st["search"]["uniform_val_top1"].get<double>() ? "search" : "uniform");
    const std::string yaml =
        read_file(dir.path() / "auto" / "search" / "stage0" / "best_ratios.yaml");
    EXPECT_NE(yaml.find("ratios: ["), std::string::npos);
    EXPECT_EQ(st["search"]["resumed_episodes"], 0);

    // Killed after episode 4: the log has 4 episodes, the stage no outputs. --resume replays the
    // 4 and ends with the same best policy.
    std::string head;
    {
        std::istringstream lines(csv);
        for (int i = 0; i < 5; ++i) {
            std::string line;
            std::getline(lines, line);
            head += line + "\n";
        }
    }
    write_file_atomic(dir.path() / "auto" / "search" / "stage0" / "episodes.csv", head);
    for (const char* f : {"stage0_channel_pruning.pfm", "stage0_channel_pruning.json",
                          "summary.json", "model.pfm", "model.onnx"}) {
        std::filesystem::remove(dir.path() / "auto" / f);
    }
    Result resumed =
        cli("--json compress --resume --config job.yaml --set output_dir=auto " + search, dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    const json rs = json::parse(resumed.out)["stages"][0]["search"];
    ASSERT_TRUE(rs.is_object()) << resumed.out;
    EXPECT_EQ(rs["resumed_episodes"], 4);
    EXPECT_EQ(rs["best_ratios"], st["search"]["best_ratios"]);
    EXPECT_EQ(read_file(dir.path() / "auto" / "search" / "stage0" / "episodes.csv"), csv);
    EXPECT_EQ(read_file(dir.path() / "auto" / "search" / "stage0" / "best_ratios.yaml"), yaml);

    // Candidates trained a few steps before they are scored.
    Result trained = cli("--json compress --config job.yaml --set output_dir=ft " + search +
                             "--set pipeline.0.search.episodes=2 --set "
                             "pipeline.0.search.finetune_steps=3",
                         dir);
    ASSERT_EQ(trained.code, 0) << trained.err;
    EXPECT_EQ(json::parse(trained.out)["stages"][0]["search"]["episodes"], 2);

    // Rerank: the 2 best distinct policies and uniform retrained 3 steps and rescored on the
    // whole validation split; the stage prunes the winner.
    Result reranked = cli("--json compress --config job.yaml --set output_dir=rerank " + search +
                              "--set pipeline.0.search.episodes=6 --set pipeline.0.search.rerank=2 "
                              "--set pipeline.0.search.rerank_steps=3",
                          dir);
    ASSERT_EQ(reranked.code, 0) << reranked.err;
    const json rr = json::parse(reranked.out)["stages"][0];
    const json& candidates = rr["search"]["rerank"]["candidates"];
    ASSERT_LE(candidates.size(), 3u) << rr.dump();
    ASSERT_GE(candidates.size(), 2u) << rr.dump();
    EXPECT_EQ(candidates[0]["episode"], -1);  // uniform first
    EXPECT_EQ(rr["search"]["rerank"]["steps"], 3);
    double top = -1;
    json winner;
    for (const auto& c : candidates) {
        if (c["rerank_val_top1"].get<double>() > top) {
            top = c["rerank_val_top1"].get<double>();
            winner = c;
        }
    }
    EXPECT_EQ(rr["search"]["best_ratios"], winner["ratios"]);
    EXPECT_EQ(rr["search"]["chosen"], winner["episode"] == -1 ? "uniform" : "search");
    EXPECT_DOUBLE_EQ(rr["search"]["best_val_top1"].get<double>(), top);
    const std::string rerank_csv =
        read_file(dir.path() / "rerank" / "search" / "stage0" / "rerank.csv");
    EXPECT_EQ(std::count(rerank_csv.begin(), rerank_csv.end(), '\n'),
              static_cast<long>(candidates.size()) + 1);

    // A latency reward: a per-layer table measured in LibTorch (and ONNX Runtime when installed),
    // cached in the run directory; the log has top-1 and latency per episode.
    std::vector<std::string> runtimes{"libtorch"};
    if (!ort_runner_path().empty()) {
        runtimes.push_back("onnxruntime");
    }
    for (const auto& runtime : runtimes) {
        const std::string out = "lat_" + runtime;
        Result lat =
            cli("--json compress --config job.yaml --set output_dir=" + out + " " + search +
                    "--set pipeline.0.search.episodes=3 --set pipeline.0.search.reward=latency "
                    "--set 'pipeline.0.search.latency={runtime: " +
                    runtime + ", batch: 4, repeat: 3}'",
                dir);
        ASSERT_EQ(lat.code, 0) << lat.err;
        const json ls = json::parse(lat.out)["stages"][0]["search"];
        EXPECT_EQ(ls["reward"], "latency");
        EXPECT_GT(ls["best_latency_ms"].get<double>(), 0.0);
        EXPECT_GT(ls["uniform_latency_ms"].get<double>(), 0.0);
        EXPECT_GE(ls["latency"]["table_entries"].get<int>(), 3);  // lenet5: 2 convs + linears
        const std::string table =
            read_file(dir.path() / out / "search" / "stage0" / "latency_table.csv");
        EXPECT_NE(table.find("runtime " + runtime + ", batch 4"), std::string::npos) << table;
        const std::string log = read_file(dir.path() / out / "search" / "stage0" / "episodes.csv");
        EXPECT_EQ(log.rfind("episode,reward,cost,top1,latency_ms,a0", 0), 0u) << log;
    }
    // Candidates are scored on the validation split: none, no search.
    Result no_val = cli("compress --config job.yaml --set data.val_size=0 " + search, dir);
    EXPECT_EQ(no_val.code, 2);
    EXPECT_NE(no_val.err.find("set data.val_size"), std::string::npos) << no_val.err;
    Result too_small = cli(
        "compress --config job.yaml " +
            std::string(search).replace(search.find("flops_target: 0.7"), 17, "flops_target: 0.2"),
        dir);
    EXPECT_EQ(too_small.code, 2);
    EXPECT_NE(too_small.err.find("lower min_ratio or raise flops_target"), std::string::npos)
        << too_small.err;
    Result no_budget = cli(
        "compress --config job.yaml --set 'pipeline=[{learner: channel_pruning, ratios: auto}]'",
        dir);
    EXPECT_EQ(no_budget.code, 2);
    EXPECT_NE(no_budget.err.find("give flops_target too"), std::string::npos) << no_budget.err;
}

TEST(CliTest, TuneEndToEnd) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    write_file_atomic(dir.file("space.yaml"), R"(objective: val_top1
trials: 4
initial: 2
params:
  train.optimizer.lr: {min: 0.003, max: 0.3, log: true}
  train.epochs: {min: 1, max: 2, integer: true}
)");
    Result r = cli("--json tune --config job.yaml --space space.yaml --out t", dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const json t = json::parse(r.out);
    ASSERT_EQ(t["trials"].size(), 4u);
    double best = -1;
    for (const auto& trial : t["trials"]) {
        ASSERT_EQ(trial["status"], "ok");
        best = std::max(best, trial["objective"].get<double>());
        const double lr = trial["train.optimizer.lr"].get<double>();
        EXPECT_GE(lr, 0.003 - 1e-12);
        EXPECT_LE(lr, 0.3 + 1e-12);
        const double epochs = trial["train.epochs"].get<double>();
        EXPECT_TRUE(epochs == 1 || epochs == 2) << epochs;
    }
    EXPECT_EQ(t["best_objective"].get<double>(), best);
    // The best job, run again, gives the best trial's result (runs are seeded); it names no run
    // directory of its own (a rerun must not write into the trial's).
    EXPECT_EQ(read_file(dir.path() / "t" / "best_job.yaml").find("output_dir"), std::string::npos);
    Result again = cli("--json compress --config t/best_job.yaml --set output_dir=again", dir);
    ASSERT_EQ(again.code, 0) << again.err;
    EXPECT_EQ(json::parse(again.out)["val_top1"].get<double>(), best);

    // Interrupted after trial 2 (and trial 3 never started): --resume proposes the same points.
    const std::string table = read_file(dir.path() / "t" / "trials.csv");
    size_t cut = 0;
    for (int i = 0; i < 3; ++i) {
        cut = table.find('\n', cut) + 1;
    }
    write_file_atomic(dir.path() / "t" / "trials.csv", table.substr(0, cut));
    std::filesystem::remove_all(dir.path() / "t" / "trial_2");
    std::filesystem::remove_all(dir.path() / "t" / "trial_3");
    Result busy = cli("tune --config job.yaml --space space.yaml --out t", dir);
    EXPECT_EQ(busy.code, 2);  // an earlier tune is there: not overwritten without --resume
    EXPECT_NE(busy.err.find("--resume"), std::string::npos) << busy.err;
    Result resumed = cli("--json tune --resume --config job.yaml --space space.yaml --out t", dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    EXPECT_EQ(read_file(dir.path() / "t" / "trials.csv").substr(0, table.find(",", cut)),
              table.substr(0, table.find(",", cut)));
    const json rt = json::parse(resumed.out);
    for (size_t k = 0; k < 4; ++k) {
        EXPECT_EQ(rt["trials"][k]["objective"], t["trials"][k]["objective"]) << k;
        EXPECT_EQ(rt["trials"][k]["train.optimizer.lr"], t["trials"][k]["train.optimizer.lr"]);
    }

    // Bad spaces: exit 2, naming the file and the key.
    write_file_atomic(dir.file("bad.yaml"),
                      "objective: val_top1\nparams:\n  train.optimizer.lrr: {min: 0.1, max: 1}\n");
    Result bad = cli("tune --config job.yaml --space bad.yaml --out b1", dir);
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("bad.yaml"), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find("train.optimizer.lrr"), std::string::npos) << bad.err;
    write_file_atomic(dir.file("bad2.yaml"),
                      "objective: val_top1\nparams:\n  train.optimizer.lr: {min: 1, max: 0.1}\n");
    Result bad2 = cli("tune --config job.yaml --space bad2.yaml --out b2", dir);
    EXPECT_EQ(bad2.code, 2);
    EXPECT_NE(bad2.err.find("params.train.optimizer.lr.max"), std::string::npos) << bad2.err;
    write_file_atomic(dir.file("bad3.yaml"),
                      "objective: nope\ntrials: 1\nparams:\n  train.epochs: {min: 1, max: 2, "
                      "integer: true}\n");
    Result bad3 = cli("tune --config job.yaml --space bad3.yaml --out b3", dir);
    EXPECT_EQ(bad3.code, 2);
    EXPECT_NE(bad3.err.find("objective 'nope'"), std::string::npos) << bad3.err;
}

TEST(CliTest, SearchedBitsEndToEnd) {
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    const std::string stage =
        from_base +
        "--set 'pipeline=[{learner: "
        "uniform_quantization, mode: ptq, bits: auto, keep_first_last: false, search: {avg_bits: "
        "3, episodes: 10, warmup: 4}}]' ";
    Result r = cli("--json compress --config job.yaml --set output_dir=q " + stage, dir);
    ASSERT_EQ(r.code, 0) << r.err;
    const json st = json::parse(r.out)["stages"][0];
    ASSERT_TRUE(st.contains("search")) << st.dump();
    EXPECT_EQ(st["search"]["episodes"], 10);
    EXPECT_LE(st["search"]["avg_bits"].get<double>(), 3.0 + 1e-9);  // the budget is met
    // Every layer got its searched weight bits (lenet5: 2 convs, 3 linears), all within 2–8.
    ASSERT_EQ(st["search"]["weight_bits"].size(), 5u);
    for (const auto& [name, b] : st["search"]["weight_bits"].items()) {
        EXPECT_EQ(st["bits"][name], fmt::format("w{}a8", b.get<int>())) << name;
        EXPECT_GE(b.get<int>(), 2);
        EXPECT_LE(b.get<int>(), 8);
    }
    EXPECT_NE(read_file(dir.path() / "q" / "search" / "stage0" / "best_bits.yaml").find("bits:"),
              std::string::npos);
    // Bad input: the budget outside the bits range; a search section without bits: auto.
    Result bad =
        cli("compress --config job.yaml " + stage + "--set pipeline.0.search.avg_bits=1", dir);
    EXPECT_EQ(bad.code, 2);
    EXPECT_NE(bad.err.find("search.avg_bits"), std::string::npos) << bad.err;
    Result stray = cli(
        "compress --config job.yaml " + from_base +
            "--set 'pipeline=[{learner: uniform_quantization, bits: 4, search: {avg_bits: 3}}]'",
        dir);
    EXPECT_EQ(stray.code, 2);
    EXPECT_NE(stray.err.find("bits: auto"), std::string::npos) << stray.err;
}

}  // namespace
}  // namespace pocketflow
