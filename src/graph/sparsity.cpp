// SPDX-License-Identifier: Apache-2.0
// Sparsity masks and the weight constraints (masks, codebooks) every training step keeps.
#include "pocketflow/sparsity.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "pocketflow/error.h"

namespace pocketflow {

bool has_mask(const Node& node) {
    return node.buffers.count("weight_mask") > 0;
}

bool has_codebook(const Node& node) {
    return node.params.count("codebook") > 0;
}

at::Tensor constrained_weight(const Node& node) {
    const at::Tensor& weight = node.params.at("weight");
    at::Tensor w = weight;
    if (has_codebook(node)) {
        const at::Tensor& index = node.buffers.at("weight_index");
        w = node.params.at("codebook")
                .index_select(0, index.reshape({-1}).to(at::kLong))
                .view(weight.sizes());
        if (w.dim() == 4) {
            w = w.contiguous(at::MemoryFormat::ChannelsLast);  // as Model keeps conv weights
        }
    }
    if (has_mask(node)) {
        // where(), not a product: a non-finite weight under the mask still gives an exact zero.
        w = at::where(node.buffers.at("weight_mask"), w, at::zeros({}, w.options()));
    }
    return w;
}

void apply_weight_constraints(Graph& graph) {
    at::NoGradGuard no_grad;
    for (Node& n : graph.nodes()) {
        if (has_codebook(n)) {
            n.params.at("weight").copy_(constrained_weight(n));
        } else if (has_mask(n)) {
            n.params.at("weight").masked_fill_(n.buffers.at("weight_mask").logical_not(), 0.0);
        }
    }
}

void validate_weight_constraints(const Node& n) {
    if (!has_weight_constraints(n) && !n.buffers.count("weight_index")) {
        return;
    }
    PF_CHECK((n.op == Op::kConv2d || n.op == Op::kLinear) && n.params.count("weight"), InputError,
             "invalid graph: {} ({}) has a sparsity mask or codebook but is no conv/linear layer",
             n.name, op_name(n.op));
    const at::Tensor& w = n.params.at("weight");
    if (has_mask(n)) {
        const at::Tensor& m = n.buffers.at("weight_mask");
        PF_CHECK(m.scalar_type() == at::kBool && m.sizes() == w.sizes(), InputError,
                 "invalid graph: {}.weight_mask must be a bool tensor of the weight's shape [{}]",
                 n.name, fmt::join(w.sizes().vec(), ", "));
        PF_CHECK(!w.masked_select(m.logical_not()).ne(0).any().item<bool>(), InputError,
                 "invalid graph: {}.weight is non-zero where its mask is false", n.name);
    }
    PF_CHECK(has_codebook(n) == (n.buffers.count("weight_index") > 0), InputError,
             "invalid graph: {} needs both a codebook and a weight_index, or neither", n.name);
    if (has_codebook(n)) {
        const at::Tensor& c = n.params.at("codebook");
        const at::Tensor& idx = n.buffers.at("weight_index");
        const int64_t k = c.numel();
        PF_CHECK(c.dim() == 1 && k >= 4 && k <= 256 && (k & (k - 1)) == 0, InputError,
                 "invalid graph: {}.codebook must hold 2^b centroids, b = 2–8 (it has {})", n.name,
                 k);
        PF_CHECK(idx.scalar_type() == at::kByte && idx.sizes() == w.sizes(), InputError,
                 "invalid graph: {}.weight_index must be a uint8 tensor of the weight's shape",
                 n.name);
        PF_CHECK(idx.numel() == 0 || idx.max().item<int64_t>() < k, InputError,
                 "invalid graph: {}.weight_index points past its {} centroids", n.name, k);
        PF_CHECK(n.quant.weight_bits == 0, InputError,
                 "invalid graph: {} has both a codebook and uniform weight quantization", n.name);
    }
}

SparsityCount count_sparsity(const Node& n) {
    SparsityCount c;
    if ((n.op == Op::kConv2d || n.op == Op::kLinear) && n.params.count("weight")) {
        const at::Tensor& w = n.params.at("weight");
        c.weights = w.numel();
        c.zeros = c.weights - w.count_nonzero().item<int64_t>();
    }
    return c;
}

SparsityCount count_sparsity(const Graph& graph) {
    SparsityCount total;
    for (const Node& n : graph.nodes()) {
        SparsityCount c = count_sparsity(n);
        total.weights += c.weights;
        total.zeros += c.zeros;
    }
    return total;
}

double scheduled_sparsity(
    double final_sparsity, int64_t step, int64_t begin, int64_t end, double alpha) {
    if (step >= end) {
        return final_sparsity;
    }
    if (step <= begin) {
        return 0.0;
    }
    const double progress =
        static_cast<double>(step - begin) / static_cast<double>(std::max<int64_t>(1, end - begin));
    return final_sparsity * (1.0 - std::pow(1.0 - std::clamp(progress, 0.0, 1.0), alpha));
}

namespace {

void set_mask(Node& node, const at::Tensor& mask) {
    at::NoGradGuard no_grad;
    at::Tensor& w = node.params.at("weight");
    auto it = node.buffers.find("weight_mask");
    if (it == node.buffers.end()) {
        node.buffers["weight_mask"] = mask.clone();
    } else {
        it->second.copy_(mask);  // keep the tensor a Model registered
    }
    w.masked_fill_(node.buffers.at("weight_mask").logical_not(), 0.0);
}

}  // namespace

void set_magnitude_mask(Node& node, double sparsity) {
    PF_CHECK(sparsity >= 0 && sparsity < 1, InputError, "sparsity of {} must lie in [0, 1), got {}",
             node.name, sparsity);
    at::NoGradGuard no_grad;
    const at::Tensor& w = node.params.at("weight");
    const int64_t n = w.numel();
    const auto pruned = static_cast<int64_t>(std::llround(sparsity * static_cast<double>(n)));
    at::Tensor flat = w.detach().contiguous().reshape({-1}).abs();
    if (has_mask(node)) {
        flat = flat.masked_fill(node.buffers.at("weight_mask").reshape({-1}).logical_not(), -1.0);
    }
    at::Tensor order = std::get<1>(at::sort(flat, /*stable=*/true, 0, /*descending=*/false));
    at::Tensor keep = at::ones({n}, at::kBool);
    keep.index_fill_(0, order.slice(0, 0, pruned), false);
    at::Tensor mask = keep.view(w.sizes());
    if (has_mask(node)) {
        mask = mask.logical_and(node.buffers.at("weight_mask"));
    }
    set_mask(node, mask);
}

bool nm_applicable(const Node& node, int m) {
    if ((node.op != Op::kConv2d && node.op != Op::kLinear) || m <= 0) {
        return false;
    }
    return node.params.at("weight").size(1) % m == 0;
}

void set_nm_mask(Node& node, int n, int m) {
    PF_CHECK(n >= 1 && n < m && nm_applicable(node, m), InputError,
             "{}: {}:{} sparsity needs input channels divisible by {}", node.name, n, m, m);
    at::NoGradGuard no_grad;
    const at::Tensor& w = node.params.at("weight");
    // Input channels last, then groups of m along them.
    at::Tensor t = w.dim() == 4 ? w.detach().permute({0, 2, 3, 1}) : w.detach();
    at::Tensor groups = t.contiguous().reshape({-1, m}).abs();
    at::Tensor top = std::get<1>(groups.topk(n, 1, /*largest=*/true, /*sorted=*/true));
    at::Tensor keep = at::zeros_like(groups, groups.options().dtype(at::kBool));
    keep.scatter_(1, top, true);
    keep = keep.reshape(t.sizes());
    if (w.dim() == 4) {
        keep = keep.permute({0, 3, 1, 2});
    }
    set_mask(node, keep.contiguous());
}

std::vector<double> log_size_sparsities(const std::vector<int64_t>& sizes,
                                        double target,
                                        double cap) {
    double total = 0;
    for (int64_t s : sizes) {
        total += static_cast<double>(s);
    }
    auto pruned_at = [&](double c, std::vector<double>* out) {
        double pruned = 0;
        for (int64_t s : sizes) {
            const double sp = std::min(cap, c * std::log(std::max<double>(2.0, double(s))));
            pruned += sp * static_cast<double>(s);
            if (out) {
                out->push_back(sp);
            }
        }
        return pruned / std::max(1.0, total);
    };
    PF_CHECK(target <= cap + 1e-12, InputError,
             "sparsity {} cannot be reached with layers capped at {}", target, cap);
    double lo = 0, hi = 1;
    while (pruned_at(hi, nullptr) < target && hi < 1e6) {
        hi *= 2;
    }
    for (int it = 0; it < 100; ++it) {
        const double mid = 0.5 * (lo + hi);
        (pruned_at(mid, nullptr) < target ? lo : hi) = mid;
    }
    std::vector<double> out;
    pruned_at(hi, &out);
    return out;
}

std::vector<double> global_magnitude_sparsities(const std::vector<at::Tensor>& weights,
                                                double target) {
    std::vector<at::Tensor> flat;
    for (const auto& w : weights) {
        flat.push_back(w.detach().reshape({-1}).abs());
    }
    std::vector<double> out(weights.size(), 0.0);
    at::Tensor all = at::cat(flat);
    const auto pruned = static_cast<int64_t>(std::llround(target * double(all.numel())));
    if (pruned == 0 || all.numel() == 0) {
        return out;
    }
    // Rank every weight once; a layer's sparsity is its share among the `pruned` smallest.
    at::Tensor order = std::get<1>(at::sort(all, /*stable=*/true, 0, false));
    at::Tensor layer_of = at::empty({all.numel()}, at::kLong);
    int64_t begin = 0;
    for (size_t l = 0; l < flat.size(); ++l) {
        layer_of.slice(0, begin, begin + flat[l].numel()).fill_(static_cast<int64_t>(l));
        begin += flat[l].numel();
    }
    at::Tensor counts = at::bincount(layer_of.index_select(0, order.slice(0, 0, pruned)), {},
                                     static_cast<int64_t>(flat.size()));
    for (size_t l = 0; l < flat.size(); ++l) {
        out[l] = flat[l].numel() > 0
                     ? static_cast<double>(counts[static_cast<int64_t>(l)].item<int64_t>()) /
                           static_cast<double>(flat[l].numel())
                     : 0.0;
    }
    return out;
}

}  // namespace pocketflow
