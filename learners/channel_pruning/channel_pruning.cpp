// SPDX-License-Identifier: Apache-2.0
#include "channel_pruning.h"

#include <chrono>
#include <numeric>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/prune.h"
#include "pocketflow/util.h"

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

/// The original network's outputs of every consumer at fixed sampled positions, from one pass
/// over the calibration images (He et al.'s targets Y), and the positions themselves, so that the
/// partly pruned network's input patches (X) can be taken at the same places group after group.
class LassoTargets {
public:
    LassoTargets(Model& reference,
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

private:
    std::map<int, std::vector<int64_t>> picks_;
    std::map<int, int64_t> per_image_;
    std::map<int, at::Tensor> y_;
    std::vector<int> order_;
};

}  // namespace

ChannelPruning::ChannelPruning(ChannelPruningOptions options) : options_(std::move(options)) {}

nlohmann::json ChannelPruning::run(RunContext& ctx) {
    using Clock = std::chrono::steady_clock;
    auto start = Clock::now();
    const Model& original = *ctx.input_model;
    Graph graph = ctx.model->graph().clone();
    const Graph before = graph.clone();
    nlohmann::json search_summary;
    const PrunePlan plan = [&] {
        PrunePlan uniform = plan_pruning(graph, options_.budget, ctx.stage.path);
        if (!options_.budget.auto_ratios) {
            return uniform;
        }
        // ratios: auto: the DDPG search picks the per-group ratios under flops_target.
        PruneBudget searched = options_.budget;
        searched.ratios = search_ratios(ctx, uniform, options_.search, options_.budget.flops_target,
                                        search_summary);
        searched.flops_target = 0;
        searched.auto_ratios = false;
        return plan_pruning(graph, searched, ctx.stage.path);
    }();
    const std::vector<ChannelGroup>& groups = plan.groups;

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
    // LASSO: calibration images and, in one pass of the original network, every pruned consumer's
    // target outputs at sampled positions.
    const bool lasso = options_.criterion == "lasso";
    std::unique_ptr<Loader> calibration;
    std::unique_ptr<LassoTargets> targets;
    if (lasso) {
        calibration = calibration_loader(ctx, options_.samples, 77);
        Model reference(original.graph().clone(), original.meta());
        reference.eval();
        std::vector<int> consumers;
        for (size_t r = 0; r < plan.prunable.size(); ++r) {
            if (plan.keep[r] < groups[plan.prunable[r]].channels) {
                const auto& c = groups[plan.prunable[r]].consumers;
                consumers.insert(consumers.end(), c.begin(), c.end());
            }
        }
        targets = std::make_unique<LassoTargets>(reference, *calibration, consumers,
                                                 options_.positions, ctx.job.seed + 99);
    }
    double selection_seconds = 0;

    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        const ChannelGroup& group = groups[plan.prunable[r]];
        const int64_t keep_count = plan.keep[r];
        if (keep_count >= group.channels) {
            continue;
        }
        auto group_start = Clock::now();
        std::vector<int64_t> keep;
        std::vector<ConsumerSample> samples;
        if (lasso) {
            // Input patches of the consumers from the partly pruned network at the sampled
            // positions; targets from the original network (cached).
            Model current(graph.clone(), original.meta());
            current.eval();
            std::vector<int> inputs;
            for (int c : group.consumers) {
                inputs.push_back(graph.nodes()[static_cast<size_t>(c)].inputs[0]);
            }
            std::vector<std::vector<at::Tensor>> xs(group.consumers.size());
            at::NoGradGuard no_grad;
            calibration->start_epoch(0);
            int64_t first = 0;
            while (auto batch = calibration->next()) {
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
                        at::Tensor idx = targets->rows(group.consumers[k], cols.size(2), first, n);
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
            at::Tensor gram = at::zeros({group.channels, group.channels}, at::kDouble);
            at::Tensor target = at::zeros({group.channels}, at::kDouble);
            for (size_t k = 0; k < group.consumers.size(); ++k) {
                const int c = group.consumers[k];
                const Node& node = graph.nodes()[static_cast<size_t>(c)];
                at::Tensor x = at::cat(xs[k]);
                at::Tensor y = targets->y(c).index_select(1, at::tensor(kept_out.at(c), at::kLong));
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
            for (size_t k = 0; k < group.consumers.size(); ++k) {
                Node& node = graph.nodes()[static_cast<size_t>(group.consumers[k])];
                at::Tensor x = samples[k]
                                   .x.index_select(1, idx)
                                   .reshape({samples[k].x.size(0), -1})
                                   .to(at::kDouble);
                at::Tensor y = samples[k].y.to(at::kDouble);
                at::Tensor a = at::matmul(x.t(), x);
                double scale = a.diagonal().mean().item<double>();
                a += at::eye(a.size(0), at::kDouble) * (options_.ridge * std::max(scale, 1e-12));
                at::Tensor w =
                    at::linalg_solve(a, at::matmul(x.t(), y)).t().to(at::kFloat);  // [O, I'·K]
                node.params["weight"] = w.reshape(node.params.at("weight").sizes()).contiguous();
            }
        }
        selection_seconds += std::chrono::duration<double>(Clock::now() - group_start).count();
        spdlog::info("[{}] group {}/{} {}: kept {} of {} channels ({} producers, {} consumers)",
                     ctx.stage.path, r + 1, plan.prunable.size(), group.name, keep.size(),
                     group.channels, group.producers.size(), group.consumers.size());
        if (options_.group_finetune_steps > 0) {
            ctx.model = std::make_shared<Model>(graph.clone(), ctx.model->meta());
            TrainConfig tc = ctx.job.train;
            tc.epochs = 1;
            tc.steps_per_epoch = options_.group_finetune_steps;
            tc.optimizer.lr = options_.finetune_lr;
            tc.schedule.name = "constant";
            tc.schedule.warmup_epochs = 0;
            Trainer trainer = make_trainer(ctx, tc, fmt::format("_group{}", r));
            trainer.fit(*ctx.model, ctx.data, ctx.job.data, ctx.job.seed + r);
            graph = ctx.model->graph().clone();
        }
    }
    const double prune_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    ctx.model = std::make_shared<Model>(graph.clone(), ctx.model->meta());
    nlohmann::json summary =
        pruning_summary(ctx.stage.path, plan, options_.budget, before, graph, prune_seconds);
    summary["criterion"] = options_.criterion;
    if (!search_summary.is_null()) {
        summary["search"] = search_summary["search"];
        summary["flops_target"] = options_.budget.flops_target;
    }
    summary["selection_seconds"] = selection_seconds;
    finetune_stage(ctx, options_.finetune_epochs, options_.finetune_lr, summary);
    return summary;
}

void register_channel_pruning(LearnerRegistry& registry) {
    registry.add(
        {"channel_pruning",
         "remove channels (LASSO/L1/L2/FPGM/BN-scale, coupled groups), reconstruct, fine-tune",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             ChannelPruningOptions o;
             ConfigReader r = stage_reader(stage, job);
             read_prune_budget(r, o.budget);
             r.read("criterion", o.criterion, "channel selection",
                    {"lasso", "l1", "l2", "fpgm", "bn_scale"});
             r.read("reconstruct", o.reconstruct,
                    "least-squares reconstruction of consumers (lasso)");
             r.read("samples", o.samples, "lasso: calibration images",
                    ConfigReader::in_range(8, 100000));
             r.read("positions", o.positions, "lasso: positions per image",
                    ConfigReader::in_range(1, 1000));
             r.read("ridge", o.ridge, "lasso: ridge of the reconstruction",
                    ConfigReader::in_range(0, 1));
             r.read("group_finetune_steps", o.group_finetune_steps,
                    "fine-tune steps after each group", ConfigReader::at_least(0));
             r.read("finetune_epochs", o.finetune_epochs, "final fine-tuning epochs",
                    ConfigReader::at_least(0));
             r.read("finetune_lr", o.finetune_lr, "fine-tuning learning rate",
                    ConfigReader::in_open_range(0, 10));
             r.section("search", "ratios: auto (DDPG search)", [&](ConfigReader& s) {
                 RatioSearchOptions& so = o.search;
                 s.read("episodes", so.episodes, "search episodes (including warm-up)",
                        ConfigReader::in_range(1, 100000));
                 s.read("warmup", so.warmup, "random episodes before the agent learns",
                        ConfigReader::at_least(0));
                 s.read("min_ratio", so.min_ratio, "smallest kept ratio of a group",
                        ConfigReader::in_open_range(0, 1));
                 s.read("eval_images", so.eval_images, "validation images per candidate",
                        ConfigReader::in_range(1, 10000000));
                 s.read("bn_batches", so.bn_batches,
                        "training batches re-estimating BN statistics per candidate",
                        ConfigReader::in_range(0, 10000));
                 s.read("criterion", so.criterion, "channel selection of candidates",
                        {"l1", "l2", "fpgm", "bn_scale"});
             });
             r.finish();
             check_prune_budget(r, o.budget);
             return std::make_unique<ChannelPruning>(o);
         }});
}

}  // namespace pocketflow::learners
