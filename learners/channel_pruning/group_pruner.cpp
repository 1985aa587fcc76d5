// SPDX-License-Identifier: Apache-2.0
// Group-by-group channel selection and reconstruction (He et al. 2017), shared by channel_pruning
// and the candidates of its ratio search.
#include "group_pruner.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <numeric>
#include <random>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "pocketflow/data.h"
#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/prune.h"

namespace pocketflow::learners {

namespace {
/// Sampled calibration data of one consumer: its input patches per channel and its original
/// outputs.
struct ConsumerSample {
    at::Tensor
        x;  ///< [M, I, K]: per sampled position, each input channel's patch (K = kh·kw or features)
    at::Tensor
        y;  ///< [M, O]: the original network's output at those positions, minus the current bias
};

}  // namespace

/// The original network's outputs of every consumer at fixed sampled positions, from one pass
/// over the calibration images (He et al.'s targets Y), and the positions themselves, so that the
/// partly pruned network's input patches (X) can be taken at the same places group after group.
struct GroupPruner::Targets {
    Targets(Model& reference,
            Loader& calibration,
            const std::vector<int>& consumers,
            int64_t positions,
            uint64_t seed) {
        const Graph& graph = reference.graph();
        auto shapes = graph.infer_shapes();
        std::mt19937_64 rng(seed);
        const int64_t images = calibration.num_samples();
        for (int c : consumers) {
            if (picks_.count(c)) {
                continue;
            }
            const Node& node = graph.nodes()[static_cast<size_t>(c)];
            std::vector<int64_t> pick;  // per image, flat output positions
            if (node.op == Op::kConv2d) {
                const auto& out = shapes[static_cast<size_t>(c)];
                const int64_t area = out[1] * out[2];
                const int64_t per_image = std::min(positions, area);
                std::vector<int64_t> all(static_cast<size_t>(area));
                for (int64_t img = 0; img < images; ++img) {
                    std::iota(all.begin(), all.end(), 0);
                    std::shuffle(all.begin(), all.end(), rng);
                    pick.insert(pick.end(), all.begin(), all.begin() + per_image);
                }
                per_image_[c] = per_image;
            } else {
                per_image_[c] = 1;
            }
            picks_[c] = std::move(pick);
            order_.push_back(c);
        }
        // One pass of the original network over the calibration images.
        at::NoGradGuard no_grad;
        std::map<int, std::vector<at::Tensor>> ys;
        calibration.start_epoch(0);
        int64_t first = 0;
        while (auto batch = calibration.next()) {
            std::vector<at::Tensor> out;
            reference.forward_capture(batch->images, order_, out);
            const int64_t n = batch->images.size(0);
            for (size_t k = 0; k < order_.size(); ++k) {
                ys[order_[k]].push_back(select(order_[k], out[k], first, n));
            }
            first += n;
        }
        for (auto& [c, parts] : ys) {
            y_[c] = at::cat(parts);
        }
    }

    /// The rows of a consumer's value [N, C, H, W] (or [N, F]) at the sampled positions of the
    /// images first..first+n: [M, C] (conv) or [n, F] (linear).
    at::Tensor select(int consumer, const at::Tensor& value, int64_t first, int64_t n) const {
        if (value.dim() != 4) {
            return value.reshape({n, -1}).contiguous();
        }
        return value.flatten(2)
            .permute({0, 2, 1})
            .reshape({-1, value.size(1)})
            .index_select(0, rows(consumer, value.size(2) * value.size(3), first, n));
    }

    /// Flat row indices into [n·L, ·] of the sampled positions of images first..first+n.
    at::Tensor rows(int consumer, int64_t area, int64_t first, int64_t n) const {
        const auto& pick = picks_.at(consumer);
        const int64_t per = per_image_.at(consumer);
        std::vector<int64_t> idx;
        idx.reserve(static_cast<size_t>(n * per));
        for (int64_t img = 0; img < n; ++img) {
            for (int64_t p = 0; p < per; ++p) {
                idx.push_back(img * area + pick[static_cast<size_t>((first + img) * per + p)]);
            }
        }
        return at::tensor(idx, at::kLong);
    }

    /// The original outputs of a consumer at the sampled positions: [M, O_original].
    const at::Tensor& y(int consumer) const { return y_.at(consumer); }

    std::map<int, std::vector<int64_t>> picks_;
    std::map<int, int64_t> per_image_;
    std::map<int, at::Tensor> y_;
    std::vector<int> order_;
};

GroupPruner::GroupPruner(const Model& original,
                         const PrunePlan& plan,
                         SelectionOptions options,
                         Loader* calibration,
                         uint64_t seed)
    : original_(original), plan_(plan), options_(std::move(options)), calibration_(calibration) {
    if (options_.criterion != "lasso") {
        return;
    }
    PF_CHECK(calibration_ != nullptr, Error, "lasso channel selection needs calibration images");
    Model reference(original.graph().clone(), original.meta());
    reference.eval();
    std::vector<int> consumers;
    for (size_t g : plan.prunable) {
        const auto& c = plan.groups[g].consumers;
        consumers.insert(consumers.end(), c.begin(), c.end());
    }
    targets_ =
        std::make_unique<Targets>(reference, *calibration_, consumers, options_.positions, seed);
}

GroupPruner::~GroupPruner() = default;

double GroupPruner::prune(Graph& graph,
                          const std::vector<int64_t>& keep_counts,
                          const AfterGroup& after_group) const {
    using Clock = std::chrono::steady_clock;
    PF_CHECK(keep_counts.size() == plan_.prunable.size(), Error,
             "{} kept counts for {} prunable groups", keep_counts.size(), plan_.prunable.size());
    const bool lasso = options_.criterion == "lasso";
    // kept_out[node]: original indices of the current output channels of each conv/linear.
    std::map<int, std::vector<int64_t>> kept_out;
    for (size_t i = 0; i < graph.nodes().size(); ++i) {
        const Node& n = graph.nodes()[i];
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            std::vector<int64_t> all(static_cast<size_t>(n.params.at("weight").size(0)));
            std::iota(all.begin(), all.end(), 0);
            kept_out[static_cast<int>(i)] = all;
        }
    }
    double selection_seconds = 0;
    for (size_t r = 0; r < plan_.prunable.size(); ++r) {
        const ChannelGroup& group = plan_.groups[plan_.prunable[r]];
        const int64_t keep_count = keep_counts[r];
        if (keep_count >= group.channels) {
            continue;
        }
        auto group_start = Clock::now();
        std::vector<int64_t> keep;
        std::vector<ConsumerSample> samples;
        if (lasso) {
            // Input patches of the consumers from the partly pruned network at the sampled
            // positions; targets from the original network (cached).
            Model current(graph.clone(), original_.meta());
            current.eval();
            std::vector<int> inputs;
            for (int c : group.consumers) {
                inputs.push_back(graph.nodes()[static_cast<size_t>(c)].inputs[0]);
            }
            std::vector<std::vector<at::Tensor>> xs(group.consumers.size());
            at::NoGradGuard no_grad;
            calibration_->start_epoch(0);
            int64_t first = 0;
            while (auto batch = calibration_->next()) {
                std::vector<at::Tensor> cur_in;
                current.forward_capture(batch->images, inputs, cur_in);
                const int64_t n = batch->images.size(0);
                for (size_t k = 0; k < group.consumers.size(); ++k) {
                    const Node& node = graph.nodes()[static_cast<size_t>(group.consumers[k])];
                    at::Tensor x = cur_in[k].contiguous();
                    if (node.op == Op::kConv2d) {
                        const Attrs& a = node.attrs;
                        at::Tensor cols = at::im2col(x, a.kernel, a.dilation, a.padding,
                                                     a.stride);  // [N, I*K, L]
                        at::Tensor idx = targets_->rows(group.consumers[k], cols.size(2), first, n);
                        at::Tensor flat = cols.permute({0, 2, 1})
                                              .reshape({-1, cols.size(1)})
                                              .index_select(0, idx);
                        xs[k].push_back(flat.reshape({flat.size(0), group.channels, -1}));
                    } else {
                        xs[k].push_back(x.reshape({n, group.channels, -1}));
                    }
                }
                first += n;
            }
            ScopedBlasThreads blas;  // the Gram matrices: large double products
            at::Tensor gram = at::zeros({group.channels, group.channels}, at::kDouble);
            at::Tensor target = at::zeros({group.channels}, at::kDouble);
            for (size_t k = 0; k < group.consumers.size(); ++k) {
                const int c = group.consumers[k];
                const Node& node = graph.nodes()[static_cast<size_t>(c)];
                at::Tensor x = at::cat(xs[k]);
                at::Tensor y =
                    targets_->y(c).index_select(1, at::tensor(kept_out.at(c), at::kLong));
                at::Tensor w = node.params.at("weight").detach().contiguous();
                if (node.params.count("bias")) {
                    y = y - node.params.at("bias").detach().unsqueeze(0);
                }
                w = w.reshape({w.size(0), group.channels, -1});  // [O, I, K]
                // Keep Z = [I, M, O] within ~64M values: use fewer positions for wide layers.
                int64_t m_max =
                    std::max<int64_t>(64, (int64_t{64} << 20) / (group.channels * w.size(0)));
                at::Tensor xm = x.size(0) > m_max ? x.narrow(0, 0, m_max) : x;
                at::Tensor ym = y.size(0) > m_max ? y.narrow(0, 0, m_max) : y;
                at::Tensor z = at::einsum("mik,oik->imo", {xm, w})
                                   .reshape({group.channels, -1})
                                   .to(at::kDouble);
                at::Tensor yv = ym.reshape({-1}).to(at::kDouble);
                double norm = std::max(yv.pow(2).sum().item<double>(), 1e-12);
                gram += at::matmul(z, z.t()) / norm;
                target += at::matmul(z, yv) / norm;
                samples.push_back({x, y});
            }
            keep = lasso_select(gram, target, keep_count);
        } else {
            keep = top_channels(channel_scores(graph, group, options_.criterion), keep_count);
        }
        prune_group(graph, group, keep);
        for (int p : group.producers) {
            auto& out = kept_out.at(p);
            std::vector<int64_t> next;
            for (int64_t k : keep) {
                next.push_back(out[static_cast<size_t>(k)]);
            }
            out = std::move(next);
        }
        if (lasso && options_.reconstruct) {
            // Least squares of the original outputs on the kept channels' patches gives new
            // weights.
            at::Tensor idx = at::tensor(keep, at::kLong);
            ScopedBlasThreads blas;
            for (size_t k = 0; k < group.consumers.size(); ++k) {
                Node& node = graph.nodes()[static_cast<size_t>(group.consumers[k])];
                at::Tensor x = samples[k]
                                   .x.index_select(1, idx)
                                   .reshape({samples[k].x.size(0), -1})
                                   .to(at::kDouble);
                at::Tensor y = samples[k].y.to(at::kDouble);
                if (std::find(group.producers.begin(), group.producers.end(), group.consumers[k]) !=
                    group.producers.end()) {
                    y = y.index_select(1, idx);  // it writes the group too: its kept rows only
                }
                at::Tensor a = at::matmul(x.t(), x);
                double scale = a.diagonal().mean().item<double>();
                a += at::eye(a.size(0), at::kDouble) * (options_.ridge * std::max(scale, 1e-12));
                at::Tensor w =
                    at::linalg_solve(a, at::matmul(x.t(), y)).t().to(at::kFloat);  // [O, I'·K]
                node.params["weight"] = w.reshape(node.params.at("weight").sizes()).contiguous();
            }
        }
        selection_seconds += std::chrono::duration<double>(Clock::now() - group_start).count();
        if (after_group) {
            after_group(r, keep.size(), graph);
        }
    }
    return selection_seconds;
}

}  // namespace pocketflow::learners
