// SPDX-License-Identifier: Apache-2.0
// Private to src/graph: cached oneDNN convolutions for Model's inference path.
#pragma once

#include <memory>
#include <mutex>

#include <ATen/core/Tensor.h>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Convolutions for inference (no autograd, float32, CPU), each a oneDNN primitive built once per
/// node and input shape, with its weights reordered once into the primitive's blocked layout and
/// an optional fused residual Add and activation (ReLU, or Clip: ReLU6 and other ranges).
/// LibTorch's own oneDNN path (at::mkldnn_convolution) rebuilds the primitive and reorders the
/// weights on every call: 2-3× slower per convolution at batch 1 (docs/performance.md). Weights are
/// repacked when their tensor changes (new storage or a bumped version counter: an optimizer step),
/// so training between evaluations stays correct.
///
/// Example:
///   ConvCache cache;
///   std::unique_lock<std::mutex> lock(cache.mutex(), std::try_to_lock);
///   if (cache.available() && lock.owns_lock()) y = cache.run(i, node, x, &relu_node);
class ConvCache {
public:
    ConvCache();
    ~ConvCache();
    ConvCache(const ConvCache&) = delete;
    ConvCache& operator=(const ConvCache&) = delete;

    /// Whether this build has oneDNN (POCKETFLOW_WITH_ONEDNN) and the environment allows it
    /// (POCKETFLOW_ONEDNN=0 turns it off, for comparisons).
    static bool available();
    /// Whether `run` can take this convolution on this input.
    static bool supports(const Node& node, const at::Tensor& input);
    /// y = conv(x) (+ `*sum_into` when given: the conv accumulates into that tensor, in place, a
    /// residual Add; then `activation` when given: a ReLU or Clip node), channels-last output.
    at::Tensor run(int id,
                   const Node& node,
                   const at::Tensor& input,
                   const Node* activation,
                   at::Tensor* sum_into = nullptr);

    /// Whether `run` can apply this node after the convolution (ReLU or Clip).
    static bool fusable_activation(const Node& node);

    /// Repack every convolution's weights and bias at its next run (they may have changed in a
    /// way their version counters do not show). Takes `mutex()` itself.
    void invalidate();

    /// `run` keeps per-node memory objects and output buffers: one forward at a time may use the
    /// cache, holding this for the whole forward (a forward on another thread meanwhile computes
    /// without the cache: Model::forward_capture try-locks it).
    std::mutex& mutex() { return mutex_; }

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::mutex mutex_;
};

}  // namespace pocketflow
