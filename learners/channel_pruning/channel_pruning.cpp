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

#include "group_pruner.h"

namespace pocketflow::learners {

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
        searched.ratios = search_ratios(ctx, uniform, options_.search, options_.selection,
                                        options_.budget.flops_target, search_summary);
        searched.flops_target = 0;
        searched.auto_ratios = false;
        return plan_pruning(graph, searched, ctx.stage.path);
    }();
    const std::vector<ChannelGroup>& groups = plan.groups;

    // LASSO: calibration images and, in one pass of the original network, every prunable
    // group's consumers' target outputs at sampled positions.
    std::unique_ptr<Loader> calibration;
    if (options_.selection.criterion == "lasso") {
        calibration = calibration_loader(ctx, options_.samples, 77);
    }
    GroupPruner pruner(original, plan, options_.selection, calibration.get(), ctx.job.seed + 99);
    const double selection_seconds =
        pruner.prune(graph, plan.keep, [&](size_t r, size_t kept, Graph& g) {
            const ChannelGroup& group = groups[plan.prunable[r]];
            spdlog::info("[{}] group {}/{} {}: kept {} of {} channels ({} producers, {} consumers)",
                         ctx.stage.path, r + 1, plan.prunable.size(), group.name, kept,
                         group.channels, group.producers.size(), group.consumers.size());
            if (options_.group_finetune_steps > 0) {
                ctx.model = std::make_shared<Model>(g.clone(), ctx.model->meta());
                const TrainConfig tc = short_finetune(ctx.job.train, options_.group_finetune_steps,
                                                      options_.finetune_lr);
                Trainer trainer = make_trainer(ctx, tc, fmt::format("_group{}", r));
                trainer.fit(*ctx.model, ctx.data, ctx.job.data, ctx.job.seed + r);
                g = ctx.model->graph().clone();
            }
        });
    ctx.model = std::make_shared<Model>(graph.clone(), ctx.model->meta());
    if (options_.budget.auto_ratios && options_.search.bn_batches > 0) {
        // As the search scored its candidates: BN statistics re-estimated after pruning.
        auto bn = calibration_loader(ctx, options_.search.bn_batches * ctx.job.data.batch_size, 313,
                                     ctx.job.data.batch_size);
        reestimate_bn(*ctx.model, *bn);
        graph = ctx.model->graph().clone();
    }
    const double prune_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    nlohmann::json summary =
        pruning_summary(ctx.stage.path, plan, options_.budget, before, graph, prune_seconds);
    summary["criterion"] = options_.selection.criterion;
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
             r.read("criterion", o.selection.criterion, "channel selection",
                    {"lasso", "l1", "l2", "fpgm", "bn_scale"});
             r.read("reconstruct", o.selection.reconstruct,
                    "least-squares reconstruction of consumers (lasso)");
             r.read("samples", o.samples, "lasso: calibration images",
                    ConfigReader::in_range(8, 100000));
             r.read("positions", o.selection.positions, "lasso: positions per image",
                    ConfigReader::in_range(1, 1000));
             r.read("ridge", o.selection.ridge, "lasso: ridge of the reconstruction",
                    ConfigReader::in_range(0, 1));
             r.read("group_finetune_steps", o.group_finetune_steps,
                    "fine-tune steps after each group", ConfigReader::at_least(0));
             r.read("finetune_epochs", o.finetune_epochs, "final fine-tuning epochs",
                    ConfigReader::at_least(0));
             r.read("finetune_lr", o.finetune_lr, "fine-tuning learning rate",
                    ConfigReader::in_open_range(0, 10));
             r.section("search", "ratios: auto (DDPG search)", [&](ConfigReader& s) {
                 RatioSearchOptions& so = o.search;
                 read_search_keys(s, so.episodes, so.warmup, so.eval_images);
                 s.read("min_ratio", so.min_ratio, "smallest kept ratio of a group",
                        ConfigReader::in_open_range(0, 1));
                 so.criterion = o.selection.criterion;  // default: prune as the stage does
                 s.read("criterion", so.criterion, "channel selection of candidates",
                        {"lasso", "l1", "l2", "fpgm", "bn_scale"});
                 // LASSO's reconstruction targets the original outputs: its statistics hold.
                 so.bn_batches = so.criterion == "lasso" ? 0 : 4;
                 s.read("bn_batches", so.bn_batches,
                        "training batches re-estimating BN statistics per candidate",
                        ConfigReader::in_range(0, 10000));
                 s.read("samples", so.samples, "lasso candidates: calibration images",
                        ConfigReader::in_range(8, 100000));
                 so.finetune_lr = o.finetune_lr;
                 s.read("finetune_steps", so.finetune_steps,
                        "training steps of each candidate before it is scored",
                        ConfigReader::in_range(0, 100000));
                 s.read("finetune_lr", so.finetune_lr,
                        "learning rate of the candidates' steps (default: the stage's)",
                        ConfigReader::in_open_range(0, 10));
                 s.read("reward", so.reward, "what the agent maximises",
                        {"top1", "amc", "latency"});
                 s.read("rerank", so.rerank,
                        "best policies retrained and rescored against uniform after the search",
                        ConfigReader::in_range(0, 1000));
                 s.read("rerank_steps", so.rerank_steps,
                        "training steps of each reranked candidate (0: one epoch)",
                        ConfigReader::in_range(0, 1000000));
                 s.read("rerank_images", so.rerank_images,
                        "validation images scoring reranked candidates (0: all)",
                        ConfigReader::in_range(0, 10000000));
                 so.rerank_lr = o.finetune_lr;
                 s.read("rerank_lr", so.rerank_lr,
                        "learning rate of the reranked candidates' training (default: the "
                        "stage's finetune_lr)",
                        ConfigReader::in_open_range(0, 10));
                 s.section("latency", "latency reward: per-layer table", [&](ConfigReader& l) {
                     l.read("runtime", so.latency.runtime, "where layers are timed",
                            {"onnxruntime", "libtorch"});
                     l.read("batch", so.latency.batch, "batch size of the timings",
                            ConfigReader::in_range(1, 4096));
                     l.read("threads", so.latency.threads, "threads (0: the job's)",
                            ConfigReader::in_range(0, 1024));
                     l.read("repeat", so.latency.repeat, "timed runs per layer",
                            ConfigReader::in_range(1, 10000));
                     l.read("weight", so.latency_weight, "w in top1 · (L_uniform / L)^w",
                            ConfigReader::in_range(0, 10));
                 });
             });
             r.finish();
             check_prune_budget(r, o.budget);
             return std::make_unique<ChannelPruning>(o);
         }});
}

}  // namespace pocketflow::learners
