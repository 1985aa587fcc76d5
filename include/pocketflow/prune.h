// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/graph.h"

namespace pocketflow {

/// A set of channels that must be removed together: the output channels of every producer that
/// meets in this channel space (through Add/Mul in residual blocks, BN, activations, pooling,
/// depthwise convs, flatten), and the matching inputs of every consumer.
///
/// Example (a residual stage): producers = {conv1, layer1_0_conv2, layer1_1_conv2}, batchnorms =
/// their BNs, consumers = {layer1_0_conv1, layer1_1_conv1, layer2_0_conv1, layer2_0_down}.
struct ChannelGroup {
    int64_t channels = 0;
    std::vector<int> producers;   ///< conv/linear nodes whose output channels are this space
    std::vector<int> depthwise;   ///< depthwise convs inside the space (channels in = out)
    std::vector<int> batchnorms;  ///< BN nodes on the space
    std::vector<int> consumers;   ///< conv/linear nodes reading the space as input channels
    std::vector<int64_t>
        consumer_spatial;  ///< per consumer: input features per channel (flatten H·W)
    bool prunable = true;
    std::string reason;  ///< why not prunable
    std::string name;    ///< the first producer's name
};

/// Analyses the graph into channel groups (in topological order of their first producer). Groups
/// that touch the input, the output, a Concat, a Reshape or a grouped (non-depthwise) conv, or
/// whose producers match one of `exclude` (glob patterns on node names), are marked not prunable.
std::vector<ChannelGroup> channel_groups(const Graph& graph,
                                         const std::vector<std::string>& exclude = {});

/// Removes every channel not in `keep` (sorted indices into the group's channels) from all tensors
/// of the group: producers' output rows and biases, depthwise weights (and their groups), BN
/// parameters and statistics, consumers' input columns. The graph stays valid and is smaller.
void prune_group(Graph& graph, const ChannelGroup& group, const std::vector<int64_t>& keep);

/// Zeroes (instead of removing) the channels not in `keep` in producers, depthwise convs and BN, so
/// that the result computes what the physically pruned graph computes (for equivalence tests).
void zero_group(Graph& graph, const ChannelGroup& group, const std::vector<int64_t>& keep);

/// Channel importance by a data-free criterion, aggregated over the group's members:
/// "l1", "l2" (norms of producer filters), "fpgm" (distance to the other filters: the geometric
/// median is least important), "bn_scale" (|gamma| of the group's BNs). Higher = more important.
at::Tensor channel_scores(const Graph& graph,
                          const ChannelGroup& group,
                          const std::string& criterion);

/// The `count` highest-scoring channels, sorted by index.
std::vector<int64_t> top_channels(const at::Tensor& scores, int64_t count);

/// Solves min_β ‖y − Zβ‖² + λ‖β‖₁ (β ≥ 0) given G = ZᵀZ and b = Zᵀy, by coordinate descent, and
/// searches λ (doubling, then bisection) until exactly `count` coefficients are non-zero. Returns
/// the selected indices (sorted) and leaves the final β in `beta`.
std::vector<int64_t> lasso_select(const at::Tensor& gram,
                                  const at::Tensor& target,
                                  int64_t count,
                                  at::Tensor* beta = nullptr);

/// Channels kept by a group of `channels` for a kept ratio: at least one, and a multiple of
/// `multiple` (or all the channels) when that is given: vectorised kernels run whole blocks of 8 or
/// 16 channels, so a group of at most `multiple` channels is not pruned at all.
int64_t kept_channels(int64_t channels, double ratio, int64_t multiple = 1);

/// MACs of a graph as a function of the channels its prunable groups keep, from the shapes alone:
/// no tensor is copied, so a budget search can ask thousands of times (ResNet-50: microseconds a
/// call). Exact: equal to `Graph::total_macs()` of the physically pruned graph (tested).
///
/// Example:
///   PrunedMacs macs(graph, groups);
///   int64_t m = macs.at({8, 16, 32});  // channels kept by each prunable group, in order
class PrunedMacs {
public:
    PrunedMacs(const Graph& graph, const std::vector<ChannelGroup>& groups);
    /// MACs with `kept[r]` channels in the r-th prunable group.
    int64_t at(const std::vector<int64_t>& kept) const;
    /// MACs with each prunable group keeping `kept_channels(channels, ratios[r], multiple)`.
    int64_t at_ratios(const std::vector<double>& ratios, int64_t multiple = 1) const;
    int64_t total() const { return total_; }
    /// Channels of each prunable group, in order.
    const std::vector<int64_t>& channels() const { return channels_; }

private:
    struct Layer {
        int64_t unit = 0;       ///< MACs per (output channel × input feature per group)
        int out_group = -1;     ///< prunable group of the output channels (-1: fixed)
        int in_group = -1;      ///< prunable group of the input channels (-1: fixed)
        int64_t out = 0;        ///< output channels
        int64_t in = 0;         ///< input features per group (channels × spatial for a linear)
        int64_t in_factor = 1;  ///< input features per channel of `in_group`
    };
    std::vector<Layer> layers_;
    std::vector<int64_t> channels_;
    int64_t total_ = 0;
};

/// MACs of the graph if every prunable group kept `ratios[g]` of its channels (structure only).
int64_t macs_with_ratios(const Graph& graph,
                         const std::vector<ChannelGroup>& groups,
                         const std::vector<double>& ratios,
                         int64_t multiple = 1);

/// Kept ratios (one per prunable group, in order) that keep `target` of the graph's MACs.
struct RatioFit {
    double uniform = 1;          ///< the one ratio for all groups found by bisection
    std::vector<double> ratios;  ///< per prunable group, after refinement
    size_t refined = 0;          ///< groups made smaller than the uniform ratio gives
    double kept_fraction = 1;    ///< of the MACs, with `ratios`
};

/// Finds one uniform kept ratio by bisection (never keeping less than `target`), then — since
/// blocks of `multiple` channels make it coarse — takes one block at a time from the group that
/// keeps the largest fraction of its channels (ties: the smallest MACs step) until the target is
/// met, keeping whichever of the last two allocations is closer to it.
RatioFit ratios_for_target(const Graph& graph,
                           const std::vector<ChannelGroup>& groups,
                           double target,
                           int64_t multiple = 1);

}  // namespace pocketflow
