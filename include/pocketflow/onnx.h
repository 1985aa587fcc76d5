// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/pfm.h"

namespace pocketflow {

struct OnnxImportOptions {
    /// {C, H, W} to use when the file's input has symbolic spatial sizes (empty: from the file).
    std::vector<int64_t> input_shape;
};

/// Maps an ONNX file (opset 9–18, e.g. from torch.onnx.export in eval or training mode) to the
/// graph IR, weights included. Constant sub-graphs (Shape/Gather/Unsqueeze/Concat computing a
/// flatten shape) are folded; Dropout/Identity disappear; MatMul + Add become Linear. Anything the
/// IR cannot represent exactly is an InputError naming the node, its op type and the attribute.
///
/// Example:
///   ModelFile m = import_onnx("resnet18.onnx");
ModelFile import_onnx(const std::string& path, const OnnxImportOptions& options = {});

struct OnnxExportOptions {
    int64_t opset = 13;           ///< 11–17
    bool dynamic_batch = true;    ///< batch dimension named "batch" instead of 1
    bool fold_batch_norm = true;  ///< fold BN into the preceding conv where it is its only reader
    /// Codebook layers (codebook.h) as codebook + uint8 indices + Gather instead of decoded float
    /// weights: a ~4x smaller .onnx that ONNX Runtime decodes once when it loads the model
    /// (docs/performance.md compares both). A sparse layer's zeros get an extra zero centroid; an
    /// 8-bit sparse codebook (257 entries) stays decoded.
    bool codebook_weights = false;
};

/// Writes a graph as an ONNX model (input "input" [N, C, H, W], output "logits" [N, classes]) that
/// passes onnx::checker and shape inference, atomically. Metadata carries the normalisation.
void export_onnx(const std::string& path,
                 const Graph& graph,
                 const ModelMeta& meta,
                 const OnnxExportOptions& options = {});

/// Loads a .pfm or an .onnx model (chosen by the file's contents).
ModelFile load_any_model(const std::string& path);

/// Result of running a model in ONNX Runtime.
struct OrtRun {
    at::Tensor output;  ///< the first output
    std::vector<double> times_ms;
    double median_ms = 0, p90_ms = 0;
    double load_ms = 0;  ///< median time to create the session (read, optimise, prepare)
};

/// Path of the ONNX Runtime runner script (tools/ort/run.js): $POCKETFLOW_ORT_RUNNER, else next to
/// the source tree this binary was built from. Empty when it (or its onnxruntime-node) is missing.
std::string ort_runner_path();

/// Runs an ONNX file in ONNX Runtime (CPU, through Node.js and onnxruntime-node) on `input`,
/// `warmup` untimed runs then `repeat` timed ones. With `optimized_path`, ONNX Runtime also saves
/// the model as it optimised it there (which kernels it chose, e.g. QLinearConv for int8). Throws
/// Error when the runtime is missing or fails.
OrtRun run_onnxruntime(const std::string& onnx_path,
                       const at::Tensor& input,
                       int64_t warmup = 0,
                       int64_t repeat = 1,
                       int64_t threads = 0,
                       const std::string& optimized_path = "");

/// Runs several ONNX files on the same input in one ONNX Runtime process, their timed runs
/// interleaved (run k of each model, then run k+1) so that load changes affect all alike; one
/// OrtRun per file, in order (only the first carries `output`). Each session is created `loads`
/// times (interleaved too) for its load_ms.
std::vector<OrtRun> run_onnxruntime(const std::vector<std::string>& onnx_paths,
                                    const at::Tensor& input,
                                    int64_t warmup,
                                    int64_t repeat,
                                    int64_t threads,
                                    const std::string& optimized_path = "",
                                    int64_t loads = 1);

/// Times several ONNX files in one ONNX Runtime process, each on its own seeded random input of
/// its shape in `shapes` (per-layer timing tables); `settle_ms` of untimed runs precede each
/// model's share of the interleaved timed runs. Outputs are not returned.
std::vector<OrtRun> time_onnxruntime(const std::vector<std::string>& onnx_paths,
                                     const std::vector<std::vector<int64_t>>& shapes,
                                     int64_t warmup,
                                     int64_t repeat,
                                     int64_t threads,
                                     double settle_ms = 50);

}  // namespace pocketflow
