// SPDX-License-Identifier: Apache-2.0
#include "discr_channel_pruning.h"

#include <chrono>
#include <cmath>
#include <numeric>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adam.h>

#include "pocketflow/error.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

AuxHead::AuxHead(int64_t channels, int64_t classes, uint64_t seed) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const double bound = 1.0 / std::sqrt(static_cast<double>(channels));
    bn_weight = at::ones({channels}).set_requires_grad(true);
    bn_bias = at::zeros({channels}).set_requires_grad(true);
    running_mean = at::zeros({channels});
    running_var = at::ones({channels});
    fc_weight = at::empty({classes, channels}).uniform_(-bound, bound, gen).set_requires_grad(true);
    fc_bias = at::zeros({classes}).set_requires_grad(true);
}

at::Tensor AuxHead::forward(const at::Tensor& features, bool training) {
    at::Tensor x = at::batch_norm(features, bn_weight, bn_bias, running_mean, running_var, training,
                                  0.1, 1e-5, true);
    return at::linear(at::adaptive_avg_pool2d(at::relu(x), {1, 1}).flatten(1), fc_weight, fc_bias);
}

at::Tensor AuxHead::loss(const at::Tensor& features, const at::Tensor& labels, bool training) {
    return cross_entropy(forward(features, training), labels, 0.0);
}

namespace {

/// A mask that broadcasts over a consumer's weight: `on` (one value per channel of its group)
/// spread over the channel's input columns — one [kh, kw] block per channel for a conv
/// [O, C, kh, kw], `factor` features per channel for a linear consumer after a flatten.
at::Tensor column_mask(const at::Tensor& weight, const at::Tensor& on, int64_t factor) {
    if (weight.dim() == 4) {
        return on.reshape({1, -1, 1, 1});
    }
    return on.repeat_interleave(factor).reshape({1, -1});
}

/// A consumer of the group being selected, its weight and the columns that belong to each channel.
struct Consumer {
    int node = -1;
    int64_t factor = 1;
    at::Tensor weight;    ///< the model's tensor (trained in place)
    at::Tensor original;  ///< its values before selection (restored when a channel is added)

    /// A mask shaped to broadcast over the weight: 1 for the channels in `keep`.
    at::Tensor mask(const at::Tensor& keep) const { return column_mask(weight, keep, factor); }
    /// Squared Frobenius norm of each channel's columns of a gradient.
    at::Tensor channel_norms(const at::Tensor& grad) const {
        if (grad.dim() == 4) {
            return grad.pow(2).sum({0, 2, 3});
        }
        return grad.pow(2).sum(0).reshape({-1, factor}).sum(1);
    }
};

/// Mean squared reconstruction error, summed over channels: ½·mean over samples (and positions)
/// of ‖ref − cur‖².
at::Tensor reconstruction(const at::Tensor& cur, const at::Tensor& ref) {
    return 0.5 * (cur - ref).pow(2).sum(1).mean();
}

/// Endless batches from a loader (restarting it when it runs out).
std::optional<Batch> next_cycled(Loader& data) {
    auto batch = data.next();
    if (!batch) {
        data.start_epoch(0);
        batch = data.next();
    }
    return batch;
}

}  // namespace

std::vector<int64_t> dcp_select(Model& model,
                                Model& reference,
                                const ChannelGroup& group,
                                int64_t keep,
                                const DiscriminationLoss& discrimination,
                                Loader& data,
                                const DcpOptions& options) {
    PF_CHECK(keep >= 1 && keep <= group.channels, Error,
             "failed to select {} channels of group {}: it has {}", keep, group.name,
             group.channels);
    Graph& graph = model.graph();
    std::vector<Consumer> consumers;
    for (size_t k = 0; k < group.consumers.size(); ++k) {
        Consumer c;
        c.node = group.consumers[k];
        c.factor = group.consumer_spatial[k];
        c.weight = graph.nodes()[static_cast<size_t>(c.node)].params.at("weight");
        c.original = c.weight.detach().clone();
        consumers.push_back(std::move(c));
    }
    // Only the consumers' weights take gradients; the model runs in eval mode (fixed BN).
    const bool was_training = model.is_training();
    std::vector<std::pair<at::Tensor, bool>> grad_state;
    std::vector<at::Tensor> frozen = model.parameters();
    if (discrimination.head != nullptr) {  // the head is trained before, not during, selection
        for (const auto& p : discrimination.head->parameters()) {
            frozen.push_back(p);
        }
    }
    for (auto& p : frozen) {
        grad_state.emplace_back(p, p.requires_grad());
        p.set_requires_grad(false);
    }
    std::vector<at::Tensor> weights;
    for (auto& c : consumers) {
        c.weight.set_requires_grad(true);
        weights.push_back(c.weight);
    }
    model.eval();
    std::vector<int> capture;
    for (const auto& c : consumers) {
        capture.push_back(c.node);
    }
    if (discrimination.head != nullptr) {
        capture.push_back(discrimination.node);
    }
    at::Tensor selected = at::zeros({group.channels});
    auto apply_mask = [&] {
        at::NoGradGuard no_grad;
        for (auto& c : consumers) {
            c.weight.mul_(c.mask(selected));
        }
    };
    apply_mask();
    // The loss of the current selection on one batch.
    auto loss_on = [&](const Batch& batch) {
        std::vector<at::Tensor> ref;
        {
            at::NoGradGuard no_grad;
            reference.forward_capture(
                batch.images,
                std::vector<int>(capture.begin(),
                                 capture.begin() + static_cast<long>(consumers.size())),
                ref);
        }
        std::vector<at::Tensor> cur;
        at::Tensor logits = model.forward_capture(batch.images, capture, cur);
        at::Tensor loss = at::zeros({});
        for (size_t k = 0; k < consumers.size(); ++k) {
            loss = loss + reconstruction(cur[k], ref[k]);
        }
        at::Tensor disc = discrimination.head != nullptr
                              ? discrimination.head->loss(cur.back(), batch.labels, false)
                              : cross_entropy(logits, batch.labels, 0.0);
        return loss + options.aux_weight * disc;
    };
    torch::optim::Adam adam(weights, torch::optim::AdamOptions(options.layer_lr));
    data.start_epoch(0);
    for (int64_t added = 0; added < keep; ++added) {
        // Gradient of the loss w.r.t. every column, chosen or not.
        auto batch = next_cycled(data);
        PF_CHECK(batch.has_value(), InputError, "failed to select channels: no calibration image");
        for (auto& w : weights) {
            w.mutable_grad() = at::Tensor();
        }
        loss_on(*batch).backward();
        at::Tensor score = at::zeros({group.channels}, at::kDouble);
        for (const auto& c : consumers) {
            score += c.channel_norms(c.weight.grad()).to(at::kDouble);
        }
        score.masked_fill_(selected.to(at::kBool), -1.0);
        const int64_t best = score.argmax().item<int64_t>();
        {
            // Add the channel with its weights from before the selection.
            at::NoGradGuard no_grad;
            at::Tensor delta = at::zeros({group.channels});
            delta[best] = 1.0;
            selected[best] = 1.0;
            for (auto& c : consumers) {
                c.weight.add_(c.original * c.mask(delta));
            }
        }
        // Re-optimise the kept weights on the same loss.
        for (int64_t step = 0; step < options.layer_steps; ++step) {
            auto b = next_cycled(data);
            adam.zero_grad();
            loss_on(*b).backward();
            {
                at::NoGradGuard no_grad;
                for (auto& c : consumers) {
                    c.weight.mutable_grad().mul_(c.mask(selected));
                }
            }
            adam.step();
            apply_mask();
        }
    }
    for (auto& [p, requires] : grad_state) {
        p.set_requires_grad(requires);
        p.mutable_grad() = at::Tensor();
    }
    if (was_training) {
        model.train();
    }
    std::vector<int64_t> kept;
    for (int64_t c = 0; c < group.channels; ++c) {
        if (selected[c].item<double>() > 0) {
            kept.push_back(c);
        }
    }
    return kept;
}

DiscrChannelPruning::DiscrChannelPruning(DcpOptions options) : options_(std::move(options)) {}

nlohmann::json DiscrChannelPruning::run(RunContext& ctx) {
    using Clock = std::chrono::steady_clock;
    auto start = Clock::now();
    const Graph before = ctx.model->graph().clone();
    const PrunePlan plan = plan_pruning(before, options_.budget, ctx.stage.path);
    const auto& groups = plan.groups;
    const int64_t classes = before.num_classes();

    // Auxiliary classifiers at P cut points; each pruned group belongs to the first stage whose
    // loss lies after all of its consumers (the final loss for the last stage).
    const std::vector<int> cuts = cut_points(before, static_cast<int>(options_.stages));
    if (static_cast<int64_t>(cuts.size()) < options_.stages) {
        spdlog::warn("[{}] the model has room for {} auxiliary classifiers, not {}", ctx.stage.path,
                     cuts.size(), options_.stages);
    }
    const auto shapes = before.infer_shapes();
    std::vector<std::unique_ptr<AuxHead>> heads;
    for (size_t p = 0; p < cuts.size(); ++p) {
        heads.push_back(std::make_unique<AuxHead>(shapes[static_cast<size_t>(cuts[p])][0], classes,
                                                  ctx.job.seed + 500 + p));
        spdlog::info("[{}] auxiliary classifier {} after {} ({} channels)", ctx.stage.path, p + 1,
                     before.nodes()[static_cast<size_t>(cuts[p])].name,
                     shapes[static_cast<size_t>(cuts[p])][0]);
    }
    std::vector<std::vector<size_t>> stage_groups(cuts.size() + 1);  // indices into plan.prunable
    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        const ChannelGroup& g = groups[plan.prunable[r]];
        if (plan.keep[r] >= g.channels) {
            continue;
        }
        const int last = *std::max_element(g.consumers.begin(), g.consumers.end());
        size_t p = 0;
        while (p < cuts.size() && cuts[p] < last) {
            ++p;
        }
        stage_groups[p].push_back(r);
    }

    auto model = std::make_shared<Model>(before.clone(), ctx.model->meta());
    Model reference(ctx.input_model->graph().clone(), ctx.input_model->meta());
    reference.eval();
    for (auto& p : reference.parameters()) {
        p.set_requires_grad(false);
    }
    auto calibration = calibration_loader(ctx, options_.samples, 131, options_.batch_size);
    // Channels kept so far, per pruned group, and the consumer weights with the masks that keep
    // the dropped channels at zero through the stage-wise fine-tuning.
    std::map<size_t, std::vector<int64_t>> kept;
    std::vector<std::pair<at::Tensor, at::Tensor>> masks;  // (weight, mask)
    auto reapply_masks = [&](Model&, int64_t) {
        at::NoGradGuard no_grad;
        for (auto& [w, mask] : masks) {
            w.mul_(mask);
        }
    };
    double block_seconds = 0, select_seconds = 0;
    nlohmann::json stage_log = nlohmann::json::array();
    for (size_t p = 0; p < stage_groups.size(); ++p) {
        if (stage_groups[p].empty()) {
            continue;
        }
        AuxHead* head = p < heads.size() ? heads[p].get() : nullptr;
        const int node = p < cuts.size() ? cuts[p] : -1;
        // 1. Stage-wise fine-tuning on L_p + L (the final loss alone for the last stage).
        auto block_start = Clock::now();
        if (options_.block_steps > 0) {
            TrainConfig tc = short_finetune(ctx.job.train, options_.block_steps, options_.block_lr);
            tc.log_every = std::max<int64_t>(1, options_.block_steps / 2);
            Trainer trainer(tc, nullptr, fmt::format("{}_stage{}", ctx.stage.path, p + 1));
            if (head != nullptr) {
                trainer.add_feature_loss(
                    {node},
                    [head](const std::vector<at::Tensor>& f, const at::Tensor& labels) {
                        return head->loss(f[0], labels, true);
                    },
                    head->parameters());
            }
            trainer.add_after_step(reapply_masks);
            trainer.fit(*model, ctx.data, ctx.job.data, ctx.job.seed + 700 + p);
        }
        block_seconds += std::chrono::duration<double>(Clock::now() - block_start).count();
        // 2. Greedy selection, group by group.
        for (size_t r : stage_groups[p]) {
            const ChannelGroup& g = groups[plan.prunable[r]];
            auto select_start = Clock::now();
            kept[r] = dcp_select(*model, reference, g, plan.keep[r], {head, node}, *calibration,
                                 options_);
            at::Tensor on = at::zeros({g.channels});
            on.index_fill_(0, at::tensor(kept[r], at::kLong), 1.0);
            for (size_t k = 0; k < g.consumers.size(); ++k) {
                at::Tensor w =
                    model->graph().nodes()[static_cast<size_t>(g.consumers[k])].params.at("weight");
                masks.emplace_back(w, column_mask(w, on, g.consumer_spatial[k]));
            }
            const double seconds =
                std::chrono::duration<double>(Clock::now() - select_start).count();
            select_seconds += seconds;
            spdlog::info(
                "[{}] stage {}/{} group {}: kept {} of {} channels ({} consumers, {:.1f} s)",
                ctx.stage.path, p + 1, stage_groups.size(), g.name, kept[r].size(), g.channels,
                g.consumers.size(), seconds);
            stage_log.push_back({{"stage", p + 1},
                                 {"group", g.name},
                                 {"kept", kept[r].size()},
                                 {"channels", g.channels}});
        }
    }
    // 3. Physical removal: the dropped channels' consumer weights are zero, so the pruned graph
    // computes what the masked model does.
    Graph graph = model->graph().clone();
    for (const auto& [r, keep] : kept) {
        prune_group(graph, groups[plan.prunable[r]], keep);
    }
    const double prune_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    ctx.model = std::make_shared<Model>(graph.clone(), ctx.model->meta());
    nlohmann::json summary =
        pruning_summary(ctx.stage.path, plan, options_.budget, before, graph, prune_seconds);
    std::vector<std::string> cut_names;
    for (int c : cuts) {
        cut_names.push_back(before.nodes()[static_cast<size_t>(c)].name);
    }
    summary["auxiliary"] = cut_names;
    summary["selection"] = stage_log;
    summary["block_finetune_seconds"] = block_seconds;
    summary["selection_seconds"] = select_seconds;
    // 4. Final fine-tuning (distillation from the stage's input model when enabled).
    finetune_stage(ctx, options_.finetune_epochs, options_.finetune_lr, summary);
    return summary;
}

void register_discr_channel_pruning(LearnerRegistry& registry) {
    registry.add(
        {"discr_channel_pruning",
         "discrimination-aware channel pruning (DCP): auxiliary losses, greedy selection, removal",
         [](const StageConfig& stage, const Job& job) -> std::unique_ptr<Learner> {
             DcpOptions o;
             ConfigReader r = stage_reader(stage, job);
             read_prune_budget(r, o.budget);
             r.read("stages", o.stages, "auxiliary classifiers (P; P + 1 pruning stages)",
                    ConfigReader::in_range(0, 32));
             r.read("block_steps", o.block_steps, "stage-wise fine-tuning steps before selection",
                    ConfigReader::at_least(0));
             r.read("block_lr", o.block_lr, "stage-wise fine-tuning learning rate",
                    ConfigReader::in_open_range(0, 10));
             r.read("samples", o.samples, "selection images", ConfigReader::in_range(8, 100000));
             r.read("batch_size", o.batch_size, "selection batch", ConfigReader::in_range(1, 4096));
             r.read("layer_steps", o.layer_steps, "re-optimisation steps after each added channel",
                    ConfigReader::at_least(0));
             r.read("layer_lr", o.layer_lr, "re-optimisation (Adam) learning rate",
                    ConfigReader::in_open_range(0, 1));
             r.read("aux_weight", o.aux_weight, "weight of the discrimination loss",
                    ConfigReader::at_least(0));
             r.read("finetune_epochs", o.finetune_epochs, "final fine-tuning epochs",
                    ConfigReader::at_least(0));
             r.read("finetune_lr", o.finetune_lr, "fine-tuning learning rate",
                    ConfigReader::in_open_range(0, 10));
             r.finish();
             check_prune_budget(r, o.budget);
             if (o.budget.auto_ratios) {
                 r.fail("ratios", "auto is available for channel_pruning only so far");
             }
             return std::make_unique<DiscrChannelPruning>(o);
         }});
}

}  // namespace pocketflow::learners
