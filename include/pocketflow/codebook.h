// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Non-uniform quantization (Han et al., Deep Compression): a layer's weights point into a
/// codebook of 2^b centroids (parameter `codebook`, buffer `weight_index`; sparsity.h describes how
/// training and every pass see them).

/// How the centroids start before k-means: evenly spaced quantiles of the weights, evenly spaced
/// between their min and max (Han et al.'s best), or k-means++ seeding (D² sampling).
enum class CodebookInit { kQuantile, kLinear, kKmeansPlusPlus };
/// "quantile" | "linear" | "kmeans++"; InputError otherwise.
CodebookInit codebook_init_from_name(const std::string& name);

/// `k` initial centroids (ascending) of the values (1-D float); `seed` drives k-means++.
at::Tensor init_centroids(const at::Tensor& values, int64_t k, CodebookInit init, uint64_t seed);

/// Index (int64) of the nearest centroid of each value; `centroids` ascending. Ties go to the
/// lower centroid.
at::Tensor assign_centroids(const at::Tensor& values, const at::Tensor& centroids);

/// Lloyd's k-means in one dimension from `centroids`: at most `max_iterations` rounds of
/// assignment and mean update, stopping when no assignment changes. A centroid that loses all its
/// values stays where it is. Returns the centroids, ascending; `iterations` gets the rounds run.
at::Tensor kmeans_1d(const at::Tensor& values,
                     at::Tensor centroids,
                     int max_iterations,
                     int* iterations = nullptr);

/// What set_codebook did to a layer.
struct CodebookReport {
    int iterations = 0;     ///< k-means rounds
    double mse = 0;         ///< mean squared change of the (non-zero) weights
    int64_t clustered = 0;  ///< weights clustered (the non-zeros of a sparse layer)
};

/// Replaces a Conv2d/Linear weight by a 2^bits-centroid codebook over its weights (the mask's
/// non-zeros on a sparse layer: zeros stay zero): init, then k-means, then the weight is decoded.
CodebookReport set_codebook(
    Node& node, int bits, CodebookInit init, int kmeans_iterations, uint64_t seed);

}  // namespace pocketflow
