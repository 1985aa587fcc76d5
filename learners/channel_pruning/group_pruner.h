// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pocketflow/model.h"
#include "pocketflow/prune_plan.h"

namespace pocketflow {
class Loader;
}

namespace pocketflow::learners {

/// How the channels of a group are chosen and its consumers rebuilt.
struct SelectionOptions {
    std::string criterion = "lasso";  ///< lasso | l1 | l2 | fpgm | bn_scale
    bool reconstruct = true;          ///< least-squares reconstruction of consumers (lasso only)
    int64_t positions = 10;           ///< lasso: sampled output positions per image
    double ridge = 1e-3;  ///< lasso: ridge term of the reconstruction (× mean diagonal)
};

/// Group-by-group channel selection of He et al. 2017, shared by the stage and by every candidate
/// of `ratios: auto`: channels chosen by LASSO on sampled input patches of the partly pruned
/// network against the original network's outputs (or by a data-free criterion), consumers
/// reconstructed by least squares, channels removed physically. The original network's target
/// outputs are computed once, in one pass over the calibration images, for the consumers of every
/// prunable group; prune() can then run any number of times with different kept counts.
///
/// Example:
///   GroupPruner pruner(original, plan, options, calibration.get(), seed);
///   Graph g = original.graph().clone();
///   pruner.prune(g, plan.keep);
class GroupPruner {
public:
    /// `calibration` is required for lasso and ignored otherwise.
    GroupPruner(const Model& original,
                const PrunePlan& plan,
                SelectionOptions options,
                Loader* calibration,
                uint64_t seed);
    ~GroupPruner();
    GroupPruner(const GroupPruner&) = delete;
    GroupPruner& operator=(const GroupPruner&) = delete;

    /// Called after each pruned group with its index in plan.prunable and the channels kept; it
    /// may change the graph (e.g. a few fine-tuning steps).
    using AfterGroup = std::function<void(size_t r, size_t kept, Graph& graph)>;

    /// Prunes `graph` (a clone of the original) to keep[r] channels of each prunable group r.
    /// Returns the seconds spent selecting and reconstructing.
    double prune(Graph& graph,
                 const std::vector<int64_t>& keep,
                 const AfterGroup& after_group = {}) const;

private:
    struct Targets;
    const Model& original_;
    const PrunePlan& plan_;
    SelectionOptions options_;
    Loader* calibration_;
    std::unique_ptr<Targets> targets_;
};

}  // namespace pocketflow::learners
