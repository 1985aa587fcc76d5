// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Weight constraints on the graph IR: sparsity masks (weight_sparsification) and codebooks
/// (nonuniform_quantization, include/pocketflow/codebook.h). Both are node state, so .pfm, eval,
/// export and every later stage see them:
/// - buffer `weight_mask` (bool, the weight's shape): the weight is exactly zero where it is false;
/// - parameter `codebook` ([2^b] float, trainable) and buffer `weight_index` (uint8, the weight's
///   shape): the weight is codebook[weight_index] (times the mask).
/// `weight` always holds the decoded values, so inference, export and analysis read it as usual.
/// Training computes the layer from constrained_weight(): masked entries get no gradient and a
/// centroid's gradient is the sum of its weights' gradients. The Trainer calls
/// apply_weight_constraints() after every optimizer step, so the invariant holds between steps.

bool has_mask(const Node& node);
bool has_codebook(const Node& node);
inline bool has_weight_constraints(const Node& node) {
    return has_mask(node) || has_codebook(node);
}

/// The weight a constrained layer computes with, differentiable in the codebook (or weight).
at::Tensor constrained_weight(const Node& node);

/// Sets every constrained node's `weight` to its constrained value (in place, no gradient).
void apply_weight_constraints(Graph& graph);

/// Checks a node's constraint tensors (dtypes, shapes, index range, zeros under the mask); throws
/// InputError naming the node.
void validate_weight_constraints(const Node& node);

/// Conv2d/Linear weights: count and zeros.
struct SparsityCount {
    int64_t weights = 0;
    int64_t zeros = 0;
    double sparsity() const {
        return weights > 0 ? static_cast<double>(zeros) / static_cast<double>(weights) : 0.0;
    }
};
SparsityCount count_sparsity(const Node& node);
SparsityCount count_sparsity(const Graph& graph);

/// Zhu & Gupta's gradual schedule: s_t = s_f·(1 − (1 − clip((t − t_b)/(t_e − t_b), 0, 1))^α).
/// Steps count completed optimizer steps; s_t = s_f from `end` on (also when end == begin).
double scheduled_sparsity(
    double final_sparsity, int64_t step, int64_t begin, int64_t end, double alpha);

/// Masks the round(sparsity·n) smallest-magnitude entries of the node's weight (ties in index
/// order) and zeroes them; entries masked before stay masked. Adds the mask buffer if missing.
void set_magnitude_mask(Node& node, double sparsity);

/// Whether a Conv2d/Linear weight can take N:M sparsity: its input channels divide into groups of
/// `m` (convs group along input channels at each kernel position).
bool nm_applicable(const Node& node, int m);
/// N:M structured sparsity (2:4): in every group of `m` consecutive input-channel weights the `n`
/// largest magnitudes stay. Adds/overwrites the mask and zeroes the rest.
void set_nm_mask(Node& node, int n, int m);

/// Per-layer sparsities proportional to log(layer size) (larger layers pruned more), scaled so the
/// pruned weights are `target` of all; each capped at `cap`. Throws InputError if unreachable.
std::vector<double> log_size_sparsities(const std::vector<int64_t>& sizes,
                                        double target,
                                        double cap = 0.99);

/// Per-layer sparsities of one magnitude threshold across all `weights` that prunes `target` of
/// them (global magnitude pruning).
std::vector<double> global_magnitude_sparsities(const std::vector<at::Tensor>& weights,
                                                double target);

}  // namespace pocketflow
