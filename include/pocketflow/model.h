// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "pocketflow/graph.h"

namespace pocketflow {

class ConvCache;  // src/graph/onednn_conv.h

/// What travels with a model besides its graph: where it came from and how inputs are normalised.
struct ModelMeta {
    std::string arch;          ///< zoo name or "onnx"/"custom"
    std::string dataset;       ///< dataset it was trained on, if known
    std::vector<double> mean;  ///< per-channel input normalisation
    std::vector<double> std;
};

/// What is wrong with a model's input normalisation for inputs of `channels` channels (empty when
/// nothing): mean and std of the same length, 0 (none given), 1 or `channels` values, finite, std
/// above 0. Model files (.pfm meta, ONNX metadata) are checked with it.
std::string normalisation_problem(const ModelMeta& meta, int64_t channels);

/// A torch::nn::Module that owns a Graph's tensors (registered as parameters and buffers named
/// `<node>.<tensor>`, so optimizers, serialization and data-parallel code work as usual) and runs
/// the graph with LibTorch functional ops. Autograd, train() and eval() behave as for any module.
///
/// Example:
///   auto model = std::make_shared<Model>(build_zoo_model("lenet5", 10, {1, 28, 28}), meta);
///   at::Tensor logits = model->forward(images);
class Model : public torch::nn::Module {
public:
    Model(Graph graph, ModelMeta meta);

    /// Runs the graph on a batch [N, C, H, W].
    at::Tensor forward(const at::Tensor& input);
    /// Runs the graph and also returns the values of the named nodes (feature maps).
    at::Tensor forward_capture(const at::Tensor& input,
                               const std::vector<int>& capture,
                               std::vector<at::Tensor>& captured);

    const Graph& graph() const { return graph_; }
    Graph& graph() { return graph_; }
    const ModelMeta& meta() const { return meta_; }
    ModelMeta& meta() { return meta_; }

    /// Quantized graphs (quant.h): whether activation values are fake-quantized (off: observe
    /// float values, e.g. to calibrate their ranges; weights stay quantized).
    void set_activation_quant(bool on) { act_quant_ = on; }
    /// Weight of each training batch in the moving average of activation ranges.
    void set_range_momentum(double momentum) { range_momentum_ = momentum; }

private:
    Graph graph_;
    ModelMeta meta_;
    std::vector<int> last_use_;  // index of the last node reading each value, to free it early
    std::vector<bool> shares_storage_;  // values that may alias another (views, identities)
    // Inference: cached oneDNN convolutions, and for each conv whether its only reader is a
    // ReLU or Clip (ReLU6) that the primitive can apply (fused_relu_[conv] = that node's index,
    // else -1).
    std::shared_ptr<ConvCache> conv_cache_;
    std::vector<int> fused_relu_;
    // ... whether its only reader is a residual Add the primitive can accumulate into the other
    // operand (-1: no), and whether that Add's only reader is a ReLU (-1: no).
    std::vector<int> fused_add_, add_relu_;
    std::vector<std::vector<int64_t>> shapes_;  // per node, [C, H, W] or [F]
    // Quantization: per node, the node whose activation quantization its value carries (-1:
    // float), whether activations are fake-quantized, and the range EMA's batch weight.
    std::vector<int> act_source_;
    bool act_quant_ = true;
    double range_momentum_ = 0.01;

    at::Tensor run_quantized_layer(size_t i, const at::Tensor& x, bool training);

    /// Whether node `i` (ReLU or Add, reading `args`) may overwrite its first input in an
    /// inference forward.
    bool can_overwrite(const Node& n,
                       size_t i,
                       const std::vector<int>& capture,
                       const std::vector<at::Tensor>& args) const;
};

/// Evaluates a single node's op on its input values (shared by Model and tests).
at::Tensor run_node(const Node& node, const std::vector<at::Tensor>& inputs, bool training);

}  // namespace pocketflow
