// SPDX-License-Identifier: Apache-2.0
// `ratios: auto`: the channel-pruning search space for the DDPG search (src/search/).
#include "ratio_search.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "pocketflow/error.h"
#include "pocketflow/prune.h"
#include "pocketflow/search.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow::learners {

namespace {

/// A candidate of the search: the input model pruned with `ratios` by a data-free criterion, with
/// its BatchNorm statistics re-estimated (pruning shifts them) on `bn` batches.
std::shared_ptr<Model> candidate(const Model& input,
                                 const PrunePlan& plan,
                                 const std::vector<double>& ratios,
                                 const std::string& criterion,
                                 Loader& bn) {
    Graph g = input.graph().clone();
    for (size_t r = 0; r < plan.prunable.size(); ++r) {
        const ChannelGroup& group = plan.groups[plan.prunable[r]];
        const int64_t keep = kept_channels(group.channels, ratios[r], plan.channel_multiple);
        if (keep < group.channels) {
            prune_group(g, group, top_channels(channel_scores(g, group, criterion), keep));
        }
    }
    auto model = std::make_shared<Model>(std::move(g), input.meta());
    at::NoGradGuard no_grad;
    std::vector<Node*> bns, dropouts;
    for (auto& n : model->graph().nodes()) {
        if (n.op == Op::kBatchNorm2d) {
            bns.push_back(&n);
        } else if (n.op == Op::kDropout) {
            dropouts.push_back(&n);
        }
    }
    if (!bns.empty() && bn.num_samples() > 0) {
        for (auto* n : bns) {
            n->buffers.at("running_mean").zero_();
            n->buffers.at("running_var").fill_(1);
        }
        // Train mode only for the statistics: Dropout stays an identity (and draws nothing).
        std::vector<double> p;
        for (auto* n : dropouts) {
            p.push_back(n->attrs.p);
            n->attrs.p = 0;
        }
        std::vector<double> momentum;
        for (auto* n : bns) {
            momentum.push_back(n->attrs.momentum);
        }
        model->train();
        int64_t k = 0;
        bn.start_epoch(0);
        while (auto batch = bn.next()) {
            for (auto* n : bns) {
                n->attrs.momentum = 1.0 / static_cast<double>(k + 1);  // cumulative average
            }
            model->forward(batch->images);
            ++k;
        }
        for (size_t i = 0; i < bns.size(); ++i) {
            bns[i]->attrs.momentum = momentum[i];
        }
        for (size_t i = 0; i < dropouts.size(); ++i) {
            dropouts[i]->attrs.p = p[i];
        }
    }
    model->eval();
    return model;
}

}  // namespace

std::vector<double> search_ratios(RunContext& ctx,
                                  const PrunePlan& plan,
                                  const RatioSearchOptions& options,
                                  double flops_target,
                                  nlohmann::json& summary) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const std::string& where = ctx.stage.path;
    PF_CHECK(!ctx.data.val_indices.empty(), ConfigError,
             "{}: ratios: auto scores candidates on the validation split (never the test set): "
             "set data.val_size (e.g. 5000)",
             where);
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
    // A seeded subset of the validation split (sorted indices may follow the classes).
    std::vector<int64_t> val = ctx.data.val_indices;
    std::shuffle(val.begin(), val.end(), std::mt19937_64(ctx.job.seed + 0xA3C));
    val.resize(std::min<size_t>(val.size(), static_cast<size_t>(options.eval_images)));
    std::sort(val.begin(), val.end());
    LoaderOptions lo;
    lo.batch_size = ctx.job.data.eval_batch_size;
    lo.mean = ctx.data.mean;
    lo.std = ctx.data.std;
    lo.crop = ctx.job.data.dataset == "imagefolder" ? ctx.job.data.image_size : 0;
    Loader val_loader(ctx.data.train_set, val, lo);
    auto bn_loader = calibration_loader(ctx, options.bn_batches * ctx.job.data.batch_size, 313,
                                        ctx.job.data.batch_size);
    auto score = [&](const std::vector<double>& ratios) {
        auto m = candidate(input, plan, ratios, options.criterion, *bn_loader);
        return evaluate(*m, val_loader).top1;
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
    space.reward = [&](const std::vector<double>& ratios) { return score(ratios); };

    const double uniform_top1 = score(plan.ratios);
    spdlog::info(
        "[{}] ratio search: {} groups, {} episodes ({} warm-up), uniform ratios give "
        "validation top-1 {:.2f}% on {} images",
        where, plan.prunable.size(), options.episodes, options.warmup, uniform_top1, val.size());
    const std::filesystem::path dir = ctx.run.path() / "search";
    std::filesystem::create_directories(dir);
    SearchOptions so;
    so.episodes = options.episodes;
    so.agent.warmup = options.warmup;
    so.agent.seed = ctx.job.seed + 7;
    so.csv_path = (dir / "episodes.csv").string();
    so.progress = [&](int64_t episode, double reward, double best) {
        if ((episode + 1) % 10 == 0 || episode + 1 == options.episodes) {
            spdlog::info("[{}] search episode {}/{}: top-1 {:.2f}%, best {:.2f}% (uniform {:.2f}%)",
                         where, episode + 1, options.episodes, reward, best, uniform_top1);
        }
    };
    SearchResult result = run_search(space, so);
    std::string yaml = fmt::format(
        "# ratios: auto found these (validation top-1 {:.2f}% before fine-tuning, uniform "
        "{:.2f}%, {:.1f}% of the MACs)\nratios: [{:.4f}]\n",
        result.best_reward, uniform_top1, 100 * result.best_cost, fmt::join(result.best, ", "));
    write_file_atomic(dir / "best_ratios.yaml", yaml);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    summary["search"] = {{"episodes", result.episodes},      {"best_val_top1", result.best_reward},
                         {"uniform_val_top1", uniform_top1}, {"best_macs_kept", result.best_cost},
                         {"best_ratios", result.best},       {"val_images", val.size()},
                         {"criterion", options.criterion},   {"seconds", seconds}};
    spdlog::info(
        "[{}] ratio search done in {:.0f} s: best validation top-1 {:.2f}% (uniform "
        "{:.2f}%) at {:.1f}% of the MACs; {}",
        where, seconds, result.best_reward, uniform_top1, 100 * result.best_cost,
        (dir / "best_ratios.yaml").string());
    return result.best;
}

}  // namespace pocketflow::learners
