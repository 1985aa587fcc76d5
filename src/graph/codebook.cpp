// SPDX-License-Identifier: Apache-2.0
// Codebooks: initialisation, 1-D k-means, and turning a layer's weights into indices.
#include "pocketflow/codebook.h"

#include <algorithm>
#include <random>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "pocketflow/error.h"
#include "pocketflow/sparsity.h"

namespace pocketflow {

CodebookInit codebook_init_from_name(const std::string& name) {
    if (name == "quantile") {
        return CodebookInit::kQuantile;
    }
    if (name == "linear") {
        return CodebookInit::kLinear;
    }
    if (name == "kmeans++") {
        return CodebookInit::kKmeansPlusPlus;
    }
    throw InputError(
        fmt::format("unknown codebook init '{}' (expected quantile, linear, kmeans++)", name));
}

at::Tensor init_centroids(const at::Tensor& values, int64_t k, CodebookInit init, uint64_t seed) {
    PF_CHECK(k >= 1 && values.numel() > 0, InputError,
             "a codebook needs at least one value and one centroid");
    at::Tensor v = values.detach().reshape({-1}).to(at::kDouble);
    const int64_t n = v.numel();
    at::Tensor out = at::empty({k}, at::kDouble);
    switch (init) {
        case CodebookInit::kQuantile: {
            at::Tensor sorted = std::get<0>(v.sort());
            for (int64_t j = 0; j < k; ++j) {
                const auto at_ = std::min<int64_t>(
                    n - 1, static_cast<int64_t>((static_cast<double>(j) + 0.5) /
                                                static_cast<double>(k) * static_cast<double>(n)));
                out[j] = sorted[at_];
            }
            break;
        }
        case CodebookInit::kLinear: {
            const double lo = v.min().item<double>(), hi = v.max().item<double>();
            for (int64_t j = 0; j < k; ++j) {
                out[j] = k == 1
                             ? 0.5 * (lo + hi)
                             : lo + (hi - lo) * static_cast<double>(j) / static_cast<double>(k - 1);
            }
            break;
        }
        case CodebookInit::kKmeansPlusPlus: {
            // D² sampling with a seeded std::mt19937_64 (the same picks under every LibTorch).
            std::mt19937_64 rng(seed);
            std::uniform_real_distribution<double> unit(0.0, 1.0);
            const double* x = v.data_ptr<double>();
            std::vector<double> d2(static_cast<size_t>(n));
            double first = x[rng() % static_cast<uint64_t>(n)];
            out[0] = first;
            for (int64_t i = 0; i < n; ++i) {
                d2[static_cast<size_t>(i)] = (x[i] - first) * (x[i] - first);
            }
            for (int64_t j = 1; j < k; ++j) {
                double total = 0;
                for (double d : d2) {
                    total += d;
                }
                int64_t pick = 0;
                if (total > 0) {
                    double r = unit(rng) * total, acc = 0;
                    for (pick = 0; pick < n - 1; ++pick) {
                        acc += d2[static_cast<size_t>(pick)];
                        if (acc > r) {
                            break;
                        }
                    }
                }
                const double c = x[pick];
                out[j] = c;
                for (int64_t i = 0; i < n; ++i) {
                    d2[static_cast<size_t>(i)] =
                        std::min(d2[static_cast<size_t>(i)], (x[i] - c) * (x[i] - c));
                }
            }
            out = std::get<0>(out.sort());
            break;
        }
    }
    return out.to(at::kFloat);
}

at::Tensor assign_centroids(const at::Tensor& values, const at::Tensor& centroids) {
    at::Tensor c = centroids.detach().to(at::kDouble);
    if (c.numel() == 1) {
        return at::zeros({values.numel()}, at::kLong);
    }
    // Nearest of ascending centroids: the number of midpoints strictly below the value.
    at::Tensor mid = (c.slice(0, 0, -1) + c.slice(0, 1)) * 0.5;
    return at::bucketize(values.detach().reshape({-1}).to(at::kDouble), mid, /*out_int32=*/false,
                         /*right=*/false);
}

at::Tensor kmeans_1d(const at::Tensor& values,
                     at::Tensor centroids,
                     int max_iterations,
                     int* iterations) {
    at::Tensor v = values.detach().reshape({-1}).to(at::kDouble);
    at::Tensor c = std::get<0>(centroids.detach().to(at::kDouble).sort());
    const int64_t k = c.numel();
    at::Tensor assign = assign_centroids(v, c);
    int rounds = 0;
    for (; rounds < max_iterations; ++rounds) {
        at::Tensor sums = at::zeros({k}, at::kDouble).index_add_(0, assign, v);
        at::Tensor counts = at::bincount(assign, {}, k).to(at::kDouble);
        c = at::where(counts > 0, sums / counts.clamp_min(1), c);
        c = std::get<0>(c.sort());
        at::Tensor next = assign_centroids(v, c);
        const bool same = next.equal(assign);
        assign = next;
        if (same) {
            ++rounds;
            break;
        }
    }
    if (iterations) {
        *iterations = rounds;
    }
    return c.to(at::kFloat);
}

CodebookReport set_codebook(
    Node& node, int bits, CodebookInit init, int kmeans_iterations, uint64_t seed) {
    PF_CHECK(node.op == Op::kConv2d || node.op == Op::kLinear, InputError,
             "{}: only conv and linear layers take a codebook", node.name);
    PF_CHECK(bits >= 2 && bits <= 8, InputError, "{}: codebook bits must be 2–8, got {}", node.name,
             bits);
    PF_CHECK(node.quant.weight_bits == 0, InputError,
             "{}: the layer is uniformly quantized already", node.name);
    at::NoGradGuard no_grad;
    at::Tensor& w = node.params.at("weight");
    at::Tensor flat = w.detach().contiguous().reshape({-1});
    at::Tensor keep = has_mask(node) ? node.buffers.at("weight_mask").contiguous().reshape({-1})
                                     : at::ones({flat.numel()}, at::kBool);
    at::Tensor values = flat.masked_select(keep);
    PF_CHECK(values.numel() == 0 || values.isfinite().all().item<bool>(), InputError,
             "{}: the weights hold NaN or infinity; a codebook needs finite weights", node.name);
    const int64_t k = int64_t{1} << bits;
    CodebookReport report;
    report.clustered = values.numel();
    at::Tensor centroids;
    at::Tensor index = at::zeros({flat.numel()}, at::kByte);
    if (values.numel() == 0) {
        centroids = at::zeros({k});
    } else {
        centroids = kmeans_1d(values, init_centroids(values, k, init, seed), kmeans_iterations,
                              &report.iterations);
        at::Tensor a = assign_centroids(values, centroids);
        index.masked_scatter_(keep, a.to(at::kByte));
        at::Tensor decoded = centroids.index_select(0, a);
        report.mse = (decoded - values).pow(2).mean().item<double>();
    }
    node.params["codebook"] = centroids.contiguous();
    node.buffers["weight_index"] = index.view(w.sizes()).contiguous();
    // The decoded weight, in the tensor the graph (and a Model) already hold.
    w.copy_(constrained_weight(node));
    return report;
}

}  // namespace pocketflow
