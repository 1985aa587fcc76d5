// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <string>

#include "pocketflow/learner.h"

#include "codebook_search.h"

namespace pocketflow::learners {

/// Options of `nonuniform_quantization` (README.md in this folder).
struct NonuniformQuantizationOptions {
    PerLayerSetting bits;          ///< codebook bits: one number, per-layer globs or a list
    std::string init = "linear";   ///< quantile | linear | kmeans++
    int kmeans_iterations = 100;   ///< Lloyd rounds at most
    int64_t epochs = 1;            ///< centroid fine-tuning epochs (0: none)
    double lr = 1e-5;              ///< centroid fine-tuning learning rate (a sum of gradients)
    bool keep_first_last = false;  ///< true: first conv and last linear stay float unless named
    bool fold_bn = true;           ///< fold BatchNorm into the convs first (the deployed graph)
    CodebookSearchOptions search;  ///< bits: auto
};

/// Deep Compression's weight sharing: a codebook of 2^b centroids per layer (k-means), weights
/// replaced by indices, then the centroids fine-tuned with the assignments fixed. Works on sparse
/// layers (the codebook covers the non-zeros). State on the graph (codebook.h), stored as packed or
/// Huffman-coded indices (weight_codec.h).
class NonuniformQuantization : public Learner {
public:
    explicit NonuniformQuantization(NonuniformQuantizationOptions options);
    nlohmann::json run(RunContext& ctx) override;

private:
    NonuniformQuantizationOptions options_;
};

void register_nonuniform_quantization(LearnerRegistry& registry);

}  // namespace pocketflow::learners
