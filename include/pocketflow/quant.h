// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/graph.h"

namespace pocketflow {

class Model;
class Loader;

/// Uniform quantization on the graph IR: what a deployed int8 model (ONNX Runtime's QDQ form)
/// computes, simulated exactly in float so that training, eval, .pfm, export and bench share it.
///
/// Weights of a quantized Conv2d/Linear: w = s_c · q, q ∈ [−qmax, qmax] (symmetric, per output
/// channel by default). Activations: a quantized value x = s · (q − z), q ∈ [0, 2^bits − 1]
/// (asymmetric, per tensor), placed where an int8 runtime has them: the inputs of quantized
/// layers, their outputs after the fused ReLU/Clip, residual Adds whose inputs are quantized, and
/// global average pools of quantized values; pass-through ops (MaxPool, Flatten, Reshape,
/// Identity, Dropout) keep their input's quantization. Biases are int32 with scale s_in · s_c,
/// as in ONNX Runtime's int8 kernels.

/// Bits of one conv/linear layer: its weights and its input activations.
struct LayerBits {
    int weights = 8;
    int activations = 8;
    bool operator==(const LayerBits& o) const {
        return weights == o.weights && activations == o.activations;
    }
};

struct QuantizeOptions {
    std::map<std::string, LayerBits> layers;  ///< Conv2d/Linear nodes to quantize, by name
    bool per_channel = true;  ///< weight scales per output channel (else per tensor)
    /// Largest weight magnitude at 8 bits: 127, or 63 for x86 int8 kernels without VNNI, whose
    /// u8×s8 pair sums saturate at 16 bits (docs/quantization.md).
    int qmax_8bit = 127;
};

/// What prepare_quantization did: the quantized layers, and the nodes that read quantized values
/// but stay float, with the reason (for the log and the stage summary).
struct QuantReport {
    std::vector<std::string> layers;
    std::vector<std::pair<std::string, std::string>> float_nodes;
};

/// Marks `graph` for quantization: QuantSpec on the layers and on every value an int8 runtime
/// quantizes, buffers `weight_scale` (from the weights' per-channel maxima) and `act_range`
/// (zero: calibrate them before use), and a zero bias on quantized layers without one (bias
/// correction and the int32 bias need it). Throws InputError for a node that is not a
/// Conv2d/Linear or bits outside 2–8.
QuantReport prepare_quantization(Graph& graph, const QuantizeOptions& options);

/// Whether any node of the graph is quantized.
bool is_quantized(const Graph& graph);

/// The largest integer magnitude of `bits`-bit symmetric weights (2^(bits-1) − 1; `qmax_8bit`
/// at 8 bits).
int weight_qmax(int bits, int qmax_8bit = 127);

/// Scale, zero point and largest integer of an activation range [lo, hi] (widened to hold 0) at
/// `bits`, computed in float32 as the exported model stores them.
struct ActParams {
    float scale = 1;
    int64_t zero_point = 0;
    int64_t qmax = 255;
};
ActParams act_params(float lo, float hi, int bits);
/// The parameters of a node with act_bits > 0, from its act_range buffer (the scale from its
/// `act_scale` parameter while ranges are learned).
ActParams act_params(const Node& node);

/// LSQ (Esser et al. 2020): gives every quantized value a trainable `act_scale` parameter,
/// initialised from its calibrated range (zero points stay as calibrated), so QAT learns the step
/// sizes instead of following min/max.
void enable_learned_ranges(Graph& graph);
/// Writes the learned scales back as ranges and removes the parameters (the graph then computes
/// the same quantization without them).
void freeze_learned_ranges(Graph& graph);

/// For every node, the node whose activation quantization its output value carries (itself, or
/// through pass-through ops the producer), or −1 when the value is float.
std::vector<int> quantized_values(const Graph& graph);

/// The fake-quantized weight of a quantized layer (straight-through gradient). In training the
/// scales are refreshed from the weights first (per-channel max |w| / qmax).
at::Tensor quantized_weight(Node& node, bool training);
/// The integers of a quantized layer's weight (int32 tensor, same shape).
at::Tensor weight_ints(const Node& node);
/// The bias of a quantized layer as int32 and its per-channel scales (input scale × weight scale,
/// float32), as the int8 model stores them.
std::pair<at::Tensor, at::Tensor> bias_ints(const Node& node, float input_scale);
/// The bias the int8 model adds (int32 grid, straight-through gradient).
at::Tensor quantized_bias(const Node& node, float input_scale);
/// Fake-quantizes a node's output value; in training the node's act_range first follows the
/// batch's min/max by an exponential moving average (`momentum`: weight of the batch), unless the
/// node's scale is learned (LSQ gradient, scaled by 1/√(features · qmax)).
at::Tensor quantize_activation(Node& node, const at::Tensor& x, bool training, double momentum);

/// Recomputes every quantized layer's scales from its weights and sets the weights to their grid
/// values s·q (idempotent), so that the float tensors, the .pfm integers and the exported
/// initializers hold the same numbers.
void snap_quantized_weights(Graph& graph);

/// How activation ranges are calibrated from observed values.
enum class RangeMethod { kMinMax, kPercentile, kMse };
/// Chooses [lo, hi] for `bits` from a sample of a value's elements and its exact min/max:
/// min/max; the `percentile` (e.g. 99.99) and its mirror; or the clipping that minimises the
/// mean squared quantization error of the sample.
std::pair<float, float> choose_range(const at::Tensor& sample,
                                     float lo,
                                     float hi,
                                     int bits,
                                     RangeMethod method,
                                     double percentile = 99.99);

/// Calibrates the activation ranges of a quantized model on `loader`'s images: every quantization
/// point observes its float values (weights quantized, activations not) in one pass, and its
/// range is chosen by `method` (choose_range, on a seeded sample of up to 2^20 values per point).
void calibrate_activation_ranges(
    Model& model, Loader& loader, RangeMethod method, double percentile = 99.99, uint64_t seed = 0);

/// Empirical bias correction (Nagel et al. 2019): layer by layer in graph order, shifts each
/// quantized layer's bias by the per-channel mean difference between its output in the quantized
/// model (earlier layers already corrected) and in `reference`, the float model it came from
/// (same node indices). Returns the largest absolute shift.
double correct_quantized_biases(Model& model, Model& reference, Loader& loader);

/// Bit packing of signed integers in [−2^(bits−1), 2^(bits−1) − 1], LSB first, `bits` per value.
std::string pack_ints(const at::Tensor& ints, int bits);
/// The inverse of pack_ints: `count` integers (int32 tensor) from `bytes`.
at::Tensor unpack_ints(const char* bytes, size_t size, int64_t count, int bits);
/// Bytes that `count` values take at `bits` each.
int64_t packed_bytes(int64_t count, int bits);

}  // namespace pocketflow
