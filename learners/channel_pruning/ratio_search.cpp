// SPDX-License-Identifier: Apache-2.0
// `ratios: auto`: the channel-pruning search space for the DDPG search (src/search/).
#include "ratio_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/prune.h"
#include "pocketflow/search.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

std::vector<double> search_ratios(RunContext& ctx,
                                  const PrunePlan& plan,
                                  const RatioSearchOptions& options,
                                  const SelectionOptions& stage_selection,
                                  double flops_target,
                                  nlohmann::json& summary) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& where = ctx.stage.path;
    PF_CHECK(!plan.prunable.empty(), ConfigError, "{}: the model has no prunable channel group",
             where);
    const Model& input = *ctx.model;
    PrunedMacs macs(input.graph(), plan.groups);
    const double total = static_cast<double>(macs.total());
    const int64_t multiple = plan.channel_multiple;
    auto cost = [&](const std::vector<double>& ratios) {
        return static_cast<double>(macs.at_ratios(ratios, multiple)) / total;
    };
    const double floor = cost(std::vector<double>(plan.prunable.size(), options.min_ratio));
    PF_CHECK(floor <= flops_target, ConfigError,
             "{}: flops_target {} is below what search.min_ratio {} allows ({:.3f} of the MACs "
             "with every group at it): lower min_ratio or raise flops_target",
             where, flops_target, options.min_ratio, floor);
    // Validation subset and BN batches: seeded, fixed for the whole search.
    auto val_loader = search_validation_loader(ctx, options.eval_images, where);
    std::unique_ptr<Loader> bn_loader;
    if (options.bn_batches > 0) {
        bn_loader = calibration_loader(ctx, options.bn_batches * ctx.job.data.batch_size, 313,
                                       ctx.job.data.batch_size);
    }
    // Candidates are pruned as the stage prunes (same selection, the stage's calibration images
    // when search.samples equals the stage's samples), then BN statistics re-estimated if asked.
    SelectionOptions selection = stage_selection;
    selection.criterion = options.criterion;
    std::unique_ptr<Loader> calibration;
    if (selection.criterion == "lasso") {
        calibration = calibration_loader(ctx, options.samples, 77);
    }
    const GroupPruner pruner(input, plan, selection, calibration.get(), ctx.job.seed + 99);
    std::unique_ptr<LatencyTable> latency;
    if (options.reward == "latency") {
        latency = std::make_unique<LatencyTable>(options.latency,
                                                 (search_dir(ctx) / "latency_table.csv").string());
    }
    DataBundle train_only = ctx.data;  // candidates' training: no per-epoch validation
    train_only.val_indices.clear();
    auto kept_counts = [&](const std::vector<double>& ratios) {
        std::vector<int64_t> keep;
        for (size_t r = 0; r < plan.prunable.size(); ++r) {
            keep.push_back(kept_channels(plan.groups[plan.prunable[r]].channels, ratios[r],
                                         plan.channel_multiple));
        }
        return keep;
    };
    // A candidate as the stage would prune it, BN statistics re-estimated if asked.
    auto candidate = [&](const std::vector<int64_t>& keep) {
        Graph g = input.graph().clone();
        pruner.prune(g, keep);
        Model m(std::move(g), input.meta());
        if (bn_loader) {
            reestimate_bn(m, *bn_loader);
        }
        return m;
    };
    double uniform_ms = 0;  // latency: the uniform candidate's
    // The reward of a candidate with validation `top1`, by options.reward (metrics: top-1, and
    // the latency under a latency reward).
    auto reward_of = [&](double top1, const Graph& g) {
        SearchSpace::Score s(top1, {top1});
        if (options.reward == "amc") {
            s.reward = -(1 - top1 / 100) * std::log(static_cast<double>(g.total_macs()));
        } else if (latency) {
            const double ms = latency->predict_ms(g);
            s.metrics.push_back(ms);
            s.reward =
                top1 * std::pow((uniform_ms > 0 ? uniform_ms : ms) / ms, options.latency_weight);
        }
        return s;
    };
    // kept counts → score (with channel blocks, candidates repeat)
    std::map<std::vector<int64_t>, SearchSpace::Score> scored;
    auto score = [&](const std::vector<double>& ratios) {
        const std::vector<int64_t> keep = kept_counts(ratios);
        if (auto it = scored.find(keep); it != scored.end()) {
            return it->second;
        }
        Model m = candidate(keep);
        if (options.finetune_steps > 0) {
            const auto level = spdlog::get_level();
            spdlog::set_level(spdlog::level::warn);  // one candidate's training is not news
            Trainer trainer(
                short_finetune(ctx.job.train, options.finetune_steps, options.finetune_lr), nullptr,
                where + "_candidate");
            trainer.fit(m, train_only, ctx.job.data, ctx.job.seed + 5);
            spdlog::set_level(level);
        }
        m.eval();
        const SearchSpace::Score s = reward_of(evaluate(m, *val_loader).top1, m.graph());
        scored.emplace(std::move(keep), s);
        return s;
    };

    SearchSpace space;
    space.lo = options.min_ratio;
    space.hi = 1.0;
    // AMC's static state: the group's channels, its share of the MACs, its producers and
    // consumers, whether it runs depthwise convs.
    int64_t widest = 1;
    for (size_t r : plan.prunable) {
        widest = std::max(widest, plan.groups[r].channels);
    }
    std::vector<double> share(plan.prunable.size());
    double largest_share = 1e-12;
    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        std::vector<double> one(plan.prunable.size(), 1.0);
        one[r] = 0.0;  // the MACs that go with the group's channels
        share[r] = 1.0 - cost(one);
        largest_share = std::max(largest_share, share[r]);
    }
    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        const ChannelGroup& g = plan.groups[plan.prunable[r]];
        space.features.push_back({static_cast<double>(g.channels) / static_cast<double>(widest),
                                  share[r] / largest_share,
                                  std::min(1.0, static_cast<double>(g.producers.size()) / 4),
                                  std::min(1.0, static_cast<double>(g.consumers.size()) / 4),
                                  g.depthwise.empty() ? 0.0 : 1.0});
    }
    space.cost = cost;
    space.max_action = [&](size_t t, const std::vector<double>& earlier) {
        // The largest ratio for group t with which the later groups at min_ratio still fit.
        std::vector<double> policy = earlier;
        policy.resize(plan.prunable.size(), options.min_ratio);
        double lo_r = options.min_ratio, hi_r = 1.0;
        policy[t] = hi_r;
        if (cost(policy) <= flops_target) {
            return hi_r;
        }
        for (int i = 0; i < 30; ++i) {
            const double mid = 0.5 * (lo_r + hi_r);
            policy[t] = mid;
            (cost(policy) <= flops_target ? lo_r : hi_r) = mid;
        }
        return lo_r;
    };
    space.reward = score;
    space.metric_names = {"top1"};
    if (latency) {
        space.metric_names.push_back("latency_ms");
    }
    space.identity = [&](const std::vector<double>& ratios) {
        return fmt::format("{}", fmt::join(kept_counts(ratios), ","));
    };

    const SearchSpace::Score uniform = score(plan.ratios);
    const double uniform_top1 = uniform.metrics[0];
    if (latency) {
        uniform_ms = uniform.metrics[1];
        spdlog::info(
            "[{}] latency table ({} at batch {}): {} entries, {} measured now; uniform "
            "candidate {:.3f} ms",
            where, options.latency.runtime, options.latency.batch, latency->size(),
            latency->measured(), uniform_ms);
    }
    spdlog::info(
        "[{}] ratio search: {} groups, {} episodes ({} warm-up), uniform ratios give "
        "validation top-1 {:.2f}% on {} images",
        where, plan.prunable.size(), options.episodes, options.warmup, uniform_top1,
        val_loader->num_samples());
    const std::filesystem::path dir = search_dir(ctx);  // made by stage_search_options
    SearchOptions so = stage_search_options(ctx, options.episodes, options.warmup, 7);
    const auto search_start = Clock::now();
    int64_t scored_here = 0;  // episodes scored by this process (not replayed)
    so.progress = [&](int64_t episode, double reward, double best) {
        ++scored_here;
        if ((episode + 1) % 10 == 0 || episode + 1 == options.episodes) {
            const double per = std::chrono::duration<double>(Clock::now() - search_start).count() /
                               static_cast<double>(scored_here);
            spdlog::info(
                "[{}] search episode {}/{}: reward {:.4g}, best {:.4g} (uniform {:.4g}), "
                "{:.1f} s/episode, {:.0f} s left",
                where, episode + 1, options.episodes, reward, best, uniform.reward, per,
                per * static_cast<double>(options.episodes - episode - 1));
        }
    };
    so.baseline = plan.ratios;  // never hand back something worse than uniform
    so.baseline_score = uniform;
    // Rerank: the best candidates and uniform, each trained as the stage's fine-tuning starts
    // (its recipe over rerank_steps, distillation as the job says) and scored on more images.
    // Steps: one epoch by default; more run as whole epochs of equal length (the schedule spans
    // them), so the count done can exceed the one asked by less than an epoch's worth.
    int64_t rerank_epochs = 1, rerank_per_epoch = 0;
    if (options.rerank > 0) {
        const int64_t epoch = steps_per_epoch(ctx, /*whole_set=*/true);  // trained in run_once
        const int64_t asked = options.rerank_steps > 0 ? options.rerank_steps : epoch;
        rerank_epochs = (asked + epoch - 1) / epoch;
        rerank_per_epoch = (asked + rerank_epochs - 1) / rerank_epochs;
    }
    const int64_t rerank_steps = rerank_epochs * rerank_per_epoch;
    std::unique_ptr<Loader> rerank_loader;
    std::shared_ptr<Model> teacher;
    if (options.rerank > 0) {
        // Scored on validation images the episodes were not scored on, so that a policy's luck
        // on those does not carry into the rerank.
        const int64_t val = static_cast<int64_t>(ctx.data.val_indices.size());
        const int64_t used = std::min(options.eval_images, val);
        if (used < val) {
            rerank_loader = search_validation_loader(
                ctx, options.rerank_images > 0 ? options.rerank_images : val - used, where, used);
        } else {
            spdlog::warn(
                "[{}] the search scored its episodes on all {} validation images: the rerank "
                "scores on the same images (raise data.val_size above search.eval_images to "
                "keep them apart)",
                where, val);
            rerank_loader = search_validation_loader(
                ctx, options.rerank_images > 0 ? options.rerank_images : val, where);
        }
        teacher = make_teacher(ctx);
        so.rerank = options.rerank;
        so.rerank_csv_path = (dir / "rerank.csv").string();
        so.rerank_score = [&](const std::vector<double>& ratios) {
            Model m = candidate(kept_counts(ratios));
            TrainConfig tc = ctx.job.train;
            tc.epochs = rerank_epochs;
            tc.steps_per_epoch = rerank_per_epoch;
            tc.optimizer.lr = options.rerank_lr;
            tc.schedule.warmup_epochs = 0;
            Trainer trainer(tc, nullptr, where + "_rerank");
            if (teacher) {
                trainer.set_teacher(teacher, ctx.job.distillation);
            }
            trainer.fit(m, train_only, ctx.job.data, ctx.job.seed + 6);
            m.eval();
            return reward_of(evaluate(m, *rerank_loader).top1, m.graph());
        };
        spdlog::info(
            "[{}] rerank after the search: the {} best policies and uniform, each trained {} "
            "steps and scored on {} validation images",
            where, options.rerank, rerank_steps, rerank_loader->num_samples());
    }
    const SearchResult result = run_search(space, so);
    const double top1 = result.best_metrics.at(0);
    std::string measured = fmt::format(
        "validation top-1 {:.2f}% {} (uniform {:.2f}%), {:.1f}% of the MACs", top1,
        options.finetune_steps > 0 ? fmt::format("after {} training steps", options.finetune_steps)
                                   : std::string("before fine-tuning"),
        uniform_top1, 100 * result.best_cost);
    if (!result.reranked.empty()) {
        measured = fmt::format(
            "validation top-1 {:.2f}% after {} training steps on {} images (uniform {:.2f}%; "
            "{}), {:.1f}% of the MACs",
            top1, rerank_steps, rerank_loader->num_samples(),
            result.reranked.front().score.metrics.at(0),
            result.baseline_kept ? "uniform kept" : "reranked", 100 * result.best_cost);
    }
    if (latency) {
        measured += fmt::format(", {} latency {:.3f} ms at batch {} (uniform {:.3f} ms)",
                                options.latency.runtime, result.best_metrics.at(1),
                                options.latency.batch, uniform_ms);
    }
    write_file_atomic(dir / "best_ratios.yaml",
                      fmt::format("# ratios: auto found these: {}\nratios: [{:.4f}]\n", measured,
                                  fmt::join(result.best, ", ")));
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    summary["search"] = {{"episodes", result.episodes},
                         {"reward", options.reward},
                         {"best_reward", result.best_reward},
                         {"uniform_reward", uniform.reward},
                         {"best_val_top1", top1},
                         {"uniform_val_top1", uniform_top1},
                         {"best_macs_kept", result.best_cost},
                         {"best_ratios", result.best},
                         {"val_images", val_loader->num_samples()},
                         {"criterion", options.criterion},
                         {"seconds", seconds},
                         {"resumed_episodes", result.resumed},
                         {"chosen", result.baseline_kept ? "uniform" : "search"},
                         {"agent_best_reward", result.agent_best_reward},
                         {"agent_best_val_top1", result.agent_best_metrics.at(0)}};
    if (!result.reranked.empty()) {
        nlohmann::json reranked = nlohmann::json::array();
        for (const auto& c : result.reranked) {
            reranked.push_back({{"episode", c.episode},
                                {"reward", c.reward},
                                {"rerank_reward", c.score.reward},
                                {"rerank_val_top1", c.score.metrics.at(0)},
                                {"ratios", c.actions}});
        }
        summary["search"]["rerank"] = {{"candidates", reranked},
                                       {"steps", rerank_steps},
                                       {"val_images", rerank_loader->num_samples()}};
        summary["search"]["uniform_rerank_val_top1"] = result.reranked.front().score.metrics.at(0);
    }
    if (latency) {
        summary["search"]["best_latency_ms"] = result.best_metrics.at(1);
        summary["search"]["uniform_latency_ms"] = uniform_ms;
        summary["search"]["latency"] = {{"runtime", options.latency.runtime},
                                        {"batch", options.latency.batch},
                                        {"threads", latency->options().threads},
                                        {"table_entries", latency->size()}};
    }
    spdlog::info("[{}] ratio search done in {:.0f} s: {}; {}", where, seconds, measured,
                 (dir / "best_ratios.yaml").string());
    return result.best;
}

}  // namespace pocketflow::learners
