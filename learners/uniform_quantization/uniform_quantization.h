// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <vector>

#include "pocketflow/learner.h"
#include "pocketflow/quant.h"

#include "bits_search.h"

namespace pocketflow::learners {

/// Bits for the layers whose names match a glob (`bits: {"layer3_*": 4}`); later entries win.
struct BitsRule {
    std::string glob;
    LayerBits bits;
    std::string where;  ///< file:line:col of the entry, for messages
};

/// Options of the `uniform_quantization` learner.
struct UniformQuantizationOptions {
    std::string mode = "qat";     ///< qat (fake-quant training) | ptq (calibration only)
    LayerBits default_bits;       ///< `bits: 8`, `{weights: 4, activations: 8}` or `default:`
    std::vector<BitsRule> rules;  ///< per-layer globs
    std::string bits_where;       ///< location of `bits`, for messages
    bool keep_first_last = true;  ///< first conv and last linear at 8/8 unless a glob names them
    bool per_channel = true;      ///< per-output-channel weight scales
    std::string weight_range = "auto";  ///< auto | full (±127) | reduced (±63 at 8 bits)
    std::string target = "native";      ///< CPU the model will run on (weight_range auto)
    std::string calibration = "mse";    ///< minmax | percentile | mse
    double percentile = 99.99;
    int64_t calibration_images = 256;
    bool bias_correction = true;   ///< ptq: empirical bias correction
    int64_t epochs = 2;            ///< qat: epochs of the job's training recipe
    double lr = 0.001;             ///< qat: learning rate
    double range_momentum = 0.01;  ///< qat: batch weight of the activation-range average
    std::string ranges = "ema";    ///< qat: ema (min/max moving average) | lsq (learned scales)
    bool bits_auto = false;        ///< `bits: auto`: weight bits searched (`search`)
    BitsSearchOptions search;
};

/// Uniform quantization (ALGORITHMS.md): weights to 2–8-bit symmetric integers (per output
/// channel), activations to unsigned integers (per tensor) where an int8 runtime has them, BN
/// folded first. `ptq`: ranges calibrated on training images, bias correction, no training.
/// `qat`: calibrated, then trained with fake quantization (straight-through estimator, ranges by
/// moving average, distillation as the job says). The quantization lives on the graph, so .pfm,
/// eval, info and export (QDQ int8 ONNX) all see it.
///
/// Example:
///   pipeline: [{learner: uniform_quantization, mode: qat, bits: 8, epochs: 2}]
class UniformQuantization : public Learner {
public:
    explicit UniformQuantization(UniformQuantizationOptions options);
    nlohmann::json run(RunContext& ctx) override;

private:
    UniformQuantizationOptions options_;
};

/// Every conv/linear of `graph` by name: whether it is the first layer or a last linear (kept at
/// 8 bits with keep_first_last).
std::map<std::string, bool> edge_layers(const Graph& graph, const std::string& stage_path);

/// The bits of every conv/linear of `graph` under `options` (first/last rule, globs, default);
/// throws ConfigError for a glob that matches no layer.
std::map<std::string, LayerBits> resolve_layer_bits(const Graph& graph,
                                                    const UniformQuantizationOptions& options,
                                                    const std::string& stage_path);

/// Adds `uniform_quantization` to a registry.
void register_uniform_quantization(LearnerRegistry& registry);

}  // namespace pocketflow::learners
