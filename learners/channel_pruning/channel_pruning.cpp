// SPDX-License-Identifier: Apache-2.0
#include "channel_pruning.h"

#include <chrono>
#include <numeric>
#include <random>

#include <ATen/ATen.h>
#include <fnmatch.h>
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

}  // namespace

ChannelPruning::ChannelPruning(ChannelPruningOptions options) : options_(std::move(options)) {}

nlohmann::json ChannelPruning::run(RunContext& ctx) {
    using Clock = std::chrono::steady_clock;
    auto start = Clock::now();
    const Model& original = *ctx.input_model;
    Graph graph = ctx.model->graph().clone();
    const Graph before = graph.clone();
    std::vector<std::string> exclude = options_.exclude;
    if (options_.keep_first_conv) {
        for (const auto& n : graph.nodes()) {
            if (n.op == Op::kConv2d) {
                exclude.push_back(n.name);
                break;
            }
        }
    }
    std::vector<ChannelGroup> groups = channel_groups(graph, exclude);
    for (const auto& pattern : options_.exclude) {
        bool used = false;
        for (const auto& n : graph.nodes()) {
            used = used || ::fnmatch(pattern.c_str(), n.name.c_str(), 0) == 0;
        }
        PF_CHECK(used, ConfigError,
                 "{}: failed to apply exclude pattern '{}': it matches no layer of the model",
                 ctx.stage.path, pattern);
    }
    std::vector<size_t> prunable;
    for (size_t g = 0; g < groups.size(); ++g) {
        if (groups[g].prunable) {
            prunable.push_back(g);
        } else {
            spdlog::debug("group {} ({} channels) kept: {}", groups[g].name, groups[g].channels,
                          groups[g].reason);
        }
    }
    PF_CHECK(!prunable.empty(), ConfigError, "{}: the model has no prunable channel group",
             ctx.stage.path);
    const int64_t macs_before = graph.total_macs();
    std::vector<double> ratios = options_.ratios;
    if (ratios.empty()) {
        RatioFit fit =
            ratios_for_target(graph, groups, options_.flops_target, options_.channel_multiple);
        ratios = fit.ratios;
        spdlog::info(
            "[{}] uniform kept ratio {:.4f} for {} groups to keep {:.1f}% of MACs ({} groups then "
            "one or more channel blocks smaller to meet it)",
            ctx.stage.path, fit.uniform, prunable.size(), 100 * options_.flops_target, fit.refined);
    } else {
        PF_CHECK(
            ratios.size() == prunable.size(), ConfigError,
            "{}: failed to prune with {} ratios: the model has {} prunable channel groups ({})",
            ctx.stage.path, ratios.size(), prunable.size(), [&] {
                std::vector<std::string> names;
                for (size_t g : prunable) {
                    names.push_back(groups[g].name);
                }
                return join(names, ", ");
            }());
    }

    // Calibration images for LASSO: a seeded subset of the training split, without augmentation.
    std::unique_ptr<Loader> calibration;
    const bool lasso = options_.criterion == "lasso";
    if (lasso) {
        std::vector<int64_t> subset = ctx.data.train_indices;
        std::shuffle(subset.begin(), subset.end(), std::mt19937_64(ctx.job.seed + 77));
        subset.resize(std::min<size_t>(subset.size(), static_cast<size_t>(options_.samples)));
        std::sort(subset.begin(), subset.end());
        LoaderOptions lo;
        lo.batch_size = 128;
        lo.mean = ctx.data.mean;
        lo.std = ctx.data.std;
        lo.crop = ctx.job.data.dataset == "imagefolder" ? ctx.job.data.image_size : 0;
        calibration = std::make_unique<Loader>(ctx.data.train_set, subset, lo);
    }
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
    Model reference(original.graph().clone(), original.meta());
    reference.eval();
    std::mt19937_64 rng(ctx.job.seed + 99);
    double selection_seconds = 0;

    for (size_t r = 0; r < prunable.size(); ++r) {
        const ChannelGroup& group = groups[prunable[r]];
        int64_t keep_count = kept_channels(group.channels, ratios[r], options_.channel_multiple);
        if (keep_count >= group.channels) {
            continue;
        }
        auto group_start = Clock::now();
        std::vector<int64_t> keep;
        std::vector<ConsumerSample> samples;
        if (lasso) {
            // Inputs of the consumers from the partly pruned network, outputs from the original.
            Model current(graph.clone(), original.meta());
            current.eval();
            std::vector<int> capture = group.consumers;
            std::vector<std::vector<at::Tensor>> xs(group.consumers.size()),
                ys(group.consumers.size());
            std::vector<int> inputs;
            for (int c : group.consumers) {
                inputs.push_back(graph.nodes()[static_cast<size_t>(c)].inputs[0]);
            }
            at::NoGradGuard no_grad;
            calibration->start_epoch(0);
            while (auto batch = calibration->next()) {
                std::vector<at::Tensor> cur_in, orig_out;
                current.forward_capture(batch->images, inputs, cur_in);
                reference.forward_capture(batch->images, capture, orig_out);
                for (size_t k = 0; k < group.consumers.size(); ++k) {
                    const Node& node = graph.nodes()[static_cast<size_t>(group.consumers[k])];
                    at::Tensor x = cur_in[k].contiguous();
                    at::Tensor y = orig_out[k].contiguous();
                    const int64_t n = x.size(0);
                    const int64_t channels = group.channels;
                    at::Tensor rows = at::tensor(kept_out.at(group.consumers[k]), at::kLong);
                    if (node.op == Op::kConv2d) {
                        const Attrs& a = node.attrs;
                        at::Tensor cols = at::im2col(x, a.kernel, a.dilation, a.padding,
                                                     a.stride);  // [N, I*K, L]
                        const int64_t positions = cols.size(2);
                        const int64_t per_image = std::min(options_.positions, positions);
                        std::vector<int64_t> pick;
                        for (int64_t img = 0; img < n; ++img) {
                            std::vector<int64_t> all(static_cast<size_t>(positions));
                            std::iota(all.begin(), all.end(), 0);
                            std::shuffle(all.begin(), all.end(), rng);
                            for (int64_t p = 0; p < per_image; ++p) {
                                pick.push_back(img * positions + all[static_cast<size_t>(p)]);
                            }
                        }
                        at::Tensor idx = at::tensor(pick, at::kLong);
                        at::Tensor flat = cols.permute({0, 2, 1})
                                              .reshape({n * positions, -1})
                                              .index_select(0, idx);
                        xs[k].push_back(flat.reshape({flat.size(0), channels, -1}));
                        at::Tensor yy =
                            y.flatten(2).permute({0, 2, 1}).reshape({n * positions, -1});
                        ys[k].push_back(yy.index_select(0, idx).index_select(1, rows));
                    } else {
                        xs[k].push_back(x.reshape({n, channels, -1}));
                        ys[k].push_back(y.index_select(1, rows));
                    }
                }
            }
            at::Tensor gram = at::zeros({group.channels, group.channels}, at::kDouble);
            at::Tensor target = at::zeros({group.channels}, at::kDouble);
            for (size_t k = 0; k < group.consumers.size(); ++k) {
                const Node& node = graph.nodes()[static_cast<size_t>(group.consumers[k])];
                at::Tensor x = at::cat(xs[k]);
                at::Tensor y = at::cat(ys[k]);
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
                     ctx.stage.path, r + 1, prunable.size(), group.name, keep.size(),
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
    const int64_t macs_after = graph.total_macs();
    const double kept_fraction = static_cast<double>(macs_after) / static_cast<double>(macs_before);
    if (options_.flops_target > 0 && kept_fraction > options_.flops_target + 0.02) {
        spdlog::warn(
            "[{}] reached {:.1f}% of the MACs for flops_target {}: the channel granularity "
            "(channel_multiple {}) or the layers that cannot be pruned allow no closer "
            "allocation; exclude fewer layers, lower channel_multiple or give per-group ratios",
            ctx.stage.path, 100 * kept_fraction, options_.flops_target, options_.channel_multiple);
    }
    spdlog::info("[{}] pruned to {} of {} MACs ({:.1f}%), {} of {} params in {:.1f} s",
                 ctx.stage.path, human_count(static_cast<double>(macs_after)),
                 human_count(static_cast<double>(macs_before)), 100.0 * kept_fraction,
                 human_count(static_cast<double>(graph.total_params())),
                 human_count(static_cast<double>(before.total_params())), prune_seconds);

    // Per-layer table: channels and MACs before and after.
    nlohmann::json layers = nlohmann::json::array();
    auto stats_before = before.layer_stats(), stats_after = graph.layer_stats();
    spdlog::info("{:<28}{:>10}{:>10}{:>14}{:>14}", "layer", "in", "out", "MACs before",
                 "MACs after");
    for (size_t i = 0; i < graph.nodes().size(); ++i) {
        const Node& a = before.nodes()[i];
        const Node& b = graph.nodes()[i];
        if (a.op != Op::kConv2d && a.op != Op::kLinear) {
            continue;
        }
        auto in = [](const Node& n) {
            return n.op == Op::kConv2d ? n.params.at("weight").size(1) * n.attrs.groups
                                       : n.params.at("weight").size(1);
        };
        int64_t out_a = a.params.at("weight").size(0), out_b = b.params.at("weight").size(0);
        layers.push_back({{"name", a.name},
                          {"in_before", in(a)},
                          {"in_after", in(b)},
                          {"out_before", out_a},
                          {"out_after", out_b},
                          {"macs_before", stats_before[i].macs},
                          {"macs_after", stats_after[i].macs}});
        spdlog::info("{:<28}{:>10}{:>10}{:>14}{:>14}", a.name, fmt::format("{}→{}", in(a), in(b)),
                     fmt::format("{}→{}", out_a, out_b), stats_before[i].macs, stats_after[i].macs);
    }
    nlohmann::json summary = {{"criterion", options_.criterion},
                              {"flops_target", options_.flops_target},
                              {"ratios", ratios},
                              {"macs_before", macs_before},
                              {"macs_after", macs_after},
                              {"macs_kept", kept_fraction},
                              {"prune_seconds", prune_seconds},
                              {"selection_seconds", selection_seconds},
                              {"layers", layers}};
    if (options_.finetune_epochs > 0) {
        TrainConfig tc = ctx.job.train;
        tc.epochs = options_.finetune_epochs;
        tc.optimizer.lr = options_.finetune_lr;
        Trainer trainer = make_trainer(ctx, tc);
        TrainResult r = trainer.fit(*ctx.model, ctx.data, ctx.job.data, ctx.job.seed + 1000);
        summary["finetune_epochs"] = tc.epochs;
        summary["images_per_second"] = r.images_per_second;
        if (r.val.samples > 0) {
            summary["val_top1"] = r.val.top1;
        }
    }
    return summary;
}

void register_channel_pruning(LearnerRegistry& registry) {
    registry.add(
        {"channel_pruning",
         "remove channels (LASSO/L1/L2/FPGM/BN-scale, coupled groups), reconstruct, fine-tune",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             ChannelPruningOptions o;
             ConfigReader r = stage_reader(stage, job);
             r.read("flops_target", o.flops_target, "kept fraction of MACs",
                    ConfigReader::in_range(0, 1));
             std::string mode = "uniform";
             YAML::Node ratios =
                 r.raw("ratios", "uniform, or a list of kept ratios per prunable group");
             if (ratios.IsDefined() && !ratios.IsNull()) {
                 if (ratios.IsScalar()) {
                     mode = ratios.Scalar();
                     if (mode == "auto") {
                         r.fail("ratios",
                                "auto needs the DDPG agent, which is not available yet; use "
                                "uniform with "
                                "flops_target, or a list");
                     }
                     if (mode != "uniform") {
                         r.fail("ratios", "expected uniform or a list of kept ratios in (0, 1]");
                     }
                 } else {
                     r.read("ratios", o.ratios, "kept ratio per prunable group",
                            ConfigReader::in_open_range(0, 1));
                 }
             }
             r.read("criterion", o.criterion, "channel selection",
                    {"lasso", "l1", "l2", "fpgm", "bn_scale"});
             YAML::Node exclude = r.raw("exclude", "glob patterns of layers never pruned");
             if (exclude.IsDefined() && !exclude.IsNull()) {
                 if (!exclude.IsSequence()) {
                     r.fail("exclude", "expected a list of layer name patterns");
                 }
                 for (const auto& e : exclude) {
                     o.exclude.push_back(e.as<std::string>());
                 }
             }
             r.read("keep_first_conv", o.keep_first_conv,
                    "never prune the first conv's output channels");
             r.read("channel_multiple", o.channel_multiple,
                    "keep whole blocks of this many channels (narrower groups stay whole)",
                    ConfigReader::in_range(1, 256));
             o.reconstruct = true;
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
             r.finish();
             if (o.ratios.empty() && o.flops_target <= 0) {
                 r.fail("flops_target",
                        "give flops_target (kept fraction of MACs, e.g. 0.5) or a list of ratios");
             }
             if (!o.ratios.empty() && o.flops_target > 0) {
                 r.fail("ratios",
                        "give either flops_target (uniform ratio) or a list of ratios, not both");
             }
             if (o.flops_target >= 1) {
                 r.fail("flops_target", "must be below 1 (1 keeps everything)");
             }
             return std::make_unique<ChannelPruning>(o);
         }});
}

}  // namespace pocketflow::learners
