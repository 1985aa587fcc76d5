// SPDX-License-Identifier: Apache-2.0
// Calibration of quantized models on real images: activation ranges and bias correction.
#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>

#include "pocketflow/data.h"
#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/quant.h"

namespace pocketflow {

namespace {

/// Per-channel mean of a layer output ([N, C, H, W] or [N, F]) summed into `sum`.
void add_channel_sums(const at::Tensor& y, at::Tensor& sum, int64_t& count) {
    at::Tensor s = y.dim() == 4 ? y.sum({0, 2, 3}) : y.sum(0);
    sum = sum.defined() ? sum + s : s;
    count += y.numel() / y.size(1);
}

}  // namespace

void calibrate_activation_ranges(
    Model& model, Loader& loader, RangeMethod method, double percentile, uint64_t seed) {
    at::NoGradGuard no_grad;
    model.eval();
    model.set_activation_quant(false);
    auto& nodes = model.graph().nodes();
    std::vector<int> points;
    for (size_t i = 1; i < nodes.size(); ++i) {
        if (nodes[i].quant.act_bits > 0) {
            points.push_back(static_cast<int>(i));
        }
    }
    const bool input_point = nodes[0].quant.act_bits > 0;
    const size_t slots = points.size() + 1;  // slot 0: the input
    std::vector<float> lo(slots, std::numeric_limits<float>::infinity()),
        hi(slots, -std::numeric_limits<float>::infinity());
    std::vector<std::vector<at::Tensor>> samples(slots);
    constexpr int64_t kPerBatch = 1 << 14, kMax = 1 << 20;
    std::vector<int64_t> kept(slots, 0);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    auto observe = [&](size_t slot, const at::Tensor& v) {
        at::Tensor x = v.detach().reshape({-1});
        auto [mn, mx] = at::aminmax(x);
        lo[slot] = std::min(lo[slot], mn.item<float>());
        hi[slot] = std::max(hi[slot], mx.item<float>());
        if (method != RangeMethod::kMinMax && kept[slot] < kMax) {
            const int64_t k = std::min({kPerBatch, x.numel(), kMax - kept[slot]});
            samples[slot].push_back(x.index_select(0, at::randint(x.numel(), {k}, gen)).clone());
            kept[slot] += k;
        }
    };
    std::vector<at::Tensor> captured;
    loader.start_epoch(0);
    int64_t batches = 0;
    while (auto batch = loader.next()) {
        ++batches;
        model.forward_capture(batch->images, points, captured);
        if (input_point) {
            observe(0, batch->images);
        }
        for (size_t k = 0; k < points.size(); ++k) {
            observe(k + 1, captured[k]);
        }
    }
    PF_CHECK(batches > 0, InputError,
             "cannot calibrate activation ranges: the calibration set has no images");
    auto set_range = [&](Node& n, size_t slot) {
        at::Tensor sample = samples[slot].empty() ? at::Tensor() : at::cat(samples[slot]);
        auto [l, h] = choose_range(sample.defined() ? sample : at::empty({0}), lo[slot], hi[slot],
                                   n.quant.act_bits, method, percentile);
        n.buffers.at("act_range").copy_(at::tensor({l, h}, at::kFloat));
    };
    if (input_point) {
        set_range(nodes[0], 0);
    }
    for (size_t k = 0; k < points.size(); ++k) {
        set_range(nodes[static_cast<size_t>(points[k])], k + 1);
    }
    model.set_activation_quant(true);
}

double correct_quantized_biases(Model& model, Model& reference, Loader& loader) {
    at::NoGradGuard no_grad;
    model.eval();
    reference.eval();
    auto& nodes = model.graph().nodes();
    std::vector<int> layers;
    for (size_t i = 0; i < nodes.size(); ++i) {
        if (nodes[i].quant.weight_bits > 0) {
            layers.push_back(static_cast<int>(i));
        }
    }
    // The float model's per-channel output means, all layers in one pass.
    std::vector<at::Tensor> want(layers.size());
    std::vector<int64_t> want_count(layers.size(), 0);
    std::vector<at::Tensor> captured;
    loader.start_epoch(0);
    while (auto batch = loader.next()) {
        reference.forward_capture(batch->images, layers, captured);
        for (size_t k = 0; k < layers.size(); ++k) {
            add_channel_sums(captured[k], want[k], want_count[k]);
        }
    }
    double largest = 0;
    for (size_t k = 0; k < layers.size(); ++k) {
        at::Tensor got;
        int64_t count = 0;
        // The layer's raw output: a layer that owns its output quantization (conv → Add) would
        // otherwise be compared after clipping and rounding.
        Node& layer = nodes[static_cast<size_t>(layers[k])];
        const int act_bits = layer.quant.act_bits;
        layer.quant.act_bits = 0;
        loader.start_epoch(0);
        while (auto batch = loader.next()) {
            model.forward_capture(batch->images, {layers[k]}, captured);
            add_channel_sums(captured[0], got, count);
        }
        layer.quant.act_bits = act_bits;
        if (count == 0) {
            continue;
        }
        at::Tensor shift =
            got / static_cast<double>(count) - want[k] / static_cast<double>(want_count[k]);
        nodes[static_cast<size_t>(layers[k])].params.at("bias").sub_(shift);
        largest = std::max(largest, shift.abs().max().item<double>());
    }
    return largest;
}

}  // namespace pocketflow
