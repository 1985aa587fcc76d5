// SPDX-License-Identifier: Apache-2.0
// End-to-end tests of weight sparsification and codebooks through the `pocketflow` binary.
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"

#include "e2e/cli_util.h"

namespace pocketflow {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(CliTest, DeepCompressionPipelineEndToEnd) {
    testing::TempDir dir;
    const std::string from_base = from_trained_base(dir);
    ASSERT_FALSE(from_base.empty());
    json b = json::parse(cli("--json info --model base/model.pfm", dir).out);
    // prune -> sparsify -> non-uniform quantize in one job.
    const std::string pipeline =
        "--set 'pipeline=[{learner: channel_pruning, flops_target: 0.7, criterion: l1, "
        "channel_multiple: 1, finetune_epochs: 1}, {learner: weight_sparsification, sparsity: "
        "0.8, begin: 0, end: 0.5, frequency: 4, epochs: 2, lr: 0.05}, {learner: "
        "nonuniform_quantization, bits: {default: 4, \"fc3\": 6}, epochs: 1, lr: 0.0001}]' ";
    Result run =
        cli("--json compress --config job.yaml --set output_dir=dc " + from_base + pipeline, dir);
    ASSERT_EQ(run.code, 0) << run.err;
    json r = json::parse(run.out);
    const json& sparse = r["stages"][1];
    ASSERT_EQ(sparse["learner"], "weight_sparsification");
    EXPECT_FALSE(sparse["layers"].contains("conv1"));  // first and last stay dense
    EXPECT_FALSE(sparse["layers"].contains("fc3"));
    for (const auto& [layer, s] : sparse["layers"].items()) {
        EXPECT_NEAR(s.get<double>(), 0.8, 0.01) << layer;
    }
    EXPECT_EQ(sparse["schedule"]["end_step"], 14);  // half of 2 epochs of 14 steps
    const json& coded = r["stages"][2];
    EXPECT_EQ(coded["layers"]["fc3"]["bits"], 6);
    EXPECT_EQ(coded["layers"]["conv2"]["bits"], 4);
    EXPECT_GT(r["top1"].get<double>(), 60.0);  // 4 classes; the base is near 100%
    // The .pfm round trip is exact: eval measures what the run measured.
    Result e = cli("--json eval --model dc/model.pfm --config job.yaml", dir);
    ASSERT_EQ(e.code, 0) << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["top1"].get<double>(), r["top1"].get<double>());
    Result info = cli("--json info --model dc/model.pfm", dir);
    ASSERT_EQ(info.code, 0) << info.err;
    json i = json::parse(info.out);
    EXPECT_GT(i["compression"].get<double>(), 6.0);
    EXPECT_LT(i["weight_bytes"].get<double>(), b["weight_bytes"].get<double>() / 6.0);
    for (const auto& l : i["layers"]) {
        if (l["name"] == "conv2") {
            EXPECT_EQ(l["codebook_bits"], 4);
            EXPECT_NEAR(l["sparsity"].get<double>(), 0.8, 0.01);
            EXPECT_GT(l["storage"]["position_bytes"].get<int>(), 0);
        }
    }
    Result text = cli("info --model dc/model.pfm", dir);
    EXPECT_NE(text.out.find("compression: "), std::string::npos) << text.out;
    EXPECT_NE(text.out.find("index"), std::string::npos) << text.out;
    if (!ort_runner_path().empty()) {
        Result checked = cli("--json export --model dc/model.pfm -o dc.onnx --check", dir);
        ASSERT_EQ(checked.code, 0) << checked.err;
        EXPECT_EQ(json::parse(checked.out)["check"], "passed");
    }
    // An interrupted sparsification resumes to the same model.
    const std::string sparsify =
        "--set 'pipeline=[{learner: weight_sparsification, sparsity: 0.7, begin: 0.1, end: 0.6, "
        "frequency: 3, epochs: 2}]' ";
    Result full = cli(
        "--json compress --config job.yaml --set output_dir=sfull " + from_base + sparsify, dir);
    ASSERT_EQ(full.code, 0) << full.err;
    Result stopped =
        cli("compress --config job.yaml --set output_dir=spart --stop-after-steps 10 " + from_base +
                sparsify,
            dir);
    EXPECT_EQ(stopped.code, 130) << stopped.err;
    Result resumed = cli(
        "--json compress --config job.yaml --set output_dir=spart --resume " + from_base + sparsify,
        dir);
    ASSERT_EQ(resumed.code, 0) << resumed.err;
    ModelFile fa = load_model((dir.path() / "sfull" / "model.pfm").string());
    ModelFile fb = load_model((dir.path() / "spart" / "model.pfm").string());
    for (size_t n = 0; n < fa.graph.nodes().size(); ++n) {
        for (const auto& [k, t] : fa.graph.nodes()[n].params) {
            EXPECT_TRUE(torch::equal(t, fb.graph.nodes()[n].params.at(k)))
                << fa.graph.nodes()[n].name << "." << k;
        }
    }
    // Searched per-layer sparsities under the budget, then the schedule to them.
    Result searched = cli("--json compress --config job.yaml --set output_dir=auto " + from_base +
                              "--set 'pipeline=[{learner: weight_sparsification, sparsity: auto, "
                              "search: {target: 0.75, episodes: 8, warmup: 4, eval_images: 64}, "
                              "epochs: 1}]'",
                          dir);
    ASSERT_EQ(searched.code, 0) << searched.err;
    json a = json::parse(searched.out)["stages"][0];
    EXPECT_EQ(a["allocation"], "auto");
    EXPECT_EQ(a["search"]["episodes"], 8);
    EXPECT_NEAR(a["search"]["sparsity"].get<double>(), 0.75, 1e-6);
    EXPECT_NEAR(a["target_sparsity"].get<double>(), 0.75, 0.01);
    EXPECT_TRUE(fs::exists(dir.path() / "auto" / "search" / "stage0" / "best_sparsity.yaml"));
    EXPECT_TRUE(fs::exists(dir.path() / "auto" / "search" / "stage0" / "episodes.csv"));
    // Searched codebook bits under a mean-bits budget.
    Result bits = cli("--json compress --config job.yaml --set output_dir=bits " + from_base +
                          "--set 'pipeline=[{learner: nonuniform_quantization, bits: auto, "
                          "search: {avg_bits: 3, episodes: 8, warmup: 4, eval_images: 64}, "
                          "epochs: 0}]'",
                      dir);
    ASSERT_EQ(bits.code, 0) << bits.err;
    json cb = json::parse(bits.out)["stages"][0];
    EXPECT_LE(cb["search"]["avg_bits"].get<double>(), 3.0 + 1e-9);
    EXPECT_EQ(cb["search"]["bits"].size(), 5u);
    for (const auto& [layer, l] : cb["layers"].items()) {
        EXPECT_EQ(l["bits"], cb["search"]["bits"][layer]) << layer;
    }
    EXPECT_TRUE(fs::exists(dir.path() / "bits" / "search" / "stage0" / "best_bits.yaml"));
    // 2:4 structured sparsity: half of every group of four input-channel weights.
    Result nm = cli("--json compress --config job.yaml --set output_dir=nm " + from_base +
                        "--set 'pipeline=[{learner: weight_sparsification, pattern: \"2:4\", "
                        "epochs: 1}]'",
                    dir);
    ASSERT_EQ(nm.code, 0) << nm.err;
    json n = json::parse(nm.out)["stages"][0];
    EXPECT_NEAR(n["layers"]["fc2"].get<double>(), 0.5, 1e-9);
    EXPECT_FALSE(n["layers"].contains("conv2"));  // 6 input channels: not groups of 4
}

TEST(CliTest, SparsityAndCodebookBadInputExitWithTwo) {
    testing::TempDir dir;
    write_file_atomic(dir.file("job.yaml"), kTinyJob);
    int calls = 0;  // each job its own run directory: a stage may finish before another fails
    auto fails = [&](const std::string& stage, const std::string& needle) {
        Result r = cli("compress --config job.yaml --set output_dir=bad" + std::to_string(calls++) +
                           " --set 'pipeline=[" + stage + "]'",
                       dir);
        EXPECT_EQ(r.code, 2) << stage << "\n" << r.err;
        EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    };
    fails("{learner: weight_sparsification, sparsity: 1.0}", "sparsity must lie in [0, 1)");
    fails("{learner: weight_sparsification, sparsity: -0.1}", "sparsity must lie in [0, 1)");
    fails("{learner: weight_sparsification, sparsity: {default: 0.5, \"conv*\": 1.5}}",
          "pipeline[0].sparsity.conv*");
    fails("{learner: weight_sparsification, sparsity: 0.5, begin: 0.6, end: 0.2}",
          "the schedule ends before it begins");
    fails("{learner: weight_sparsification}", "pipeline[0].sparsity");
    fails("{learner: weight_sparsification, sparsity: 0.5, pattern: \"4:2\"}", "N:M");
    fails("{learner: weight_sparsification, sparsity: {\"res*\": 0.5}}",
          "the glob matches no layer");
    fails("{learner: weight_sparsification, sparsity: [0.5, 0.5]}", "2 values for 5 layers");
    fails("{learner: weight_sparsification, sparsity: auto}",
          "sparsity: auto and a search: section (with its target) go together");
    fails("{learner: weight_sparsification, sparsity: 0.5, search: {target: 0.5}}",
          "sparsity: auto and a search: section (with its target) go together");
    fails(
        "{learner: weight_sparsification, sparsity: auto, search: {target: 0.99, max_sparsity: "
        "0.9}}",
        "exceeds max_sparsity");
    fails(
        "{learner: weight_sparsification, sparsity: 0.5}, {learner: channel_pruning, "
        "flops_target: 0.7, criterion: l1}",
        "prune channels before weight_sparsification");
    fails("{learner: nonuniform_quantization, bits: 4}, {learner: uniform_quantization, mode: ptq}",
          "has a codebook (nonuniform_quantization)");
    fails("{learner: nonuniform_quantization, bits: auto}",
          "bits: auto and a search: section go together");
    fails("{learner: nonuniform_quantization, bits: auto, search: {avg_bits: 5, max_bits: 4}}",
          "must lie in [min_bits 2, max_bits 4]");
    fails("{learner: nonuniform_quantization, bits: 9}", "bits must be an integer 2–8");
    fails("{learner: nonuniform_quantization, bits: 1}", "bits must be an integer 2–8");
    fails("{learner: nonuniform_quantization, bits: 4, init: kmeans}", "did you mean");
    fails("{learner: nonuniform_quantization, bits: {\"nope\": 4}}", "the glob matches no layer");
}

}  // namespace
}  // namespace pocketflow
