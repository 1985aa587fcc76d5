// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace pocketflow {

/// The search machinery that picks per-layer compression (AMC, He et al. 2018): a DDPG agent and
/// the budget arithmetic that makes every episode meet the budget. Learners describe their
/// decision points; the agent knows nothing about models (ALGORITHMS.md, "The RL agent").

/// The cost of one decision point as a function of its action a ∈ [lo, hi]: fixed + linear · a
/// (e.g. a layer's MACs when a is its kept ratio, with the part that does not shrink in `fixed`).
struct ActionCost {
    double fixed = 0;
    double linear = 0;
    double lo = 0, hi = 1;  ///< the action's range
};

/// The largest action for decision point `t` that still lets the budget be met: the points before
/// it cost `spent`, the points after it are assumed at their cheapest (their `lo`). The result is
/// clipped into [costs[t].lo, costs[t].hi]; when even `lo` overshoots, `lo` is returned (the
/// budget cannot be met by any action: check_budget_reachable says so up front).
double max_action_within_budget(const std::vector<ActionCost>& costs,
                                size_t t,
                                double spent,
                                double budget);
/// Whether the cheapest choice of every point meets `budget`.
bool budget_reachable(const std::vector<ActionCost>& costs, double budget);

struct DdpgOptions {
    int64_t hidden = 300;          ///< units of both hidden layers (LayerNorm + ReLU)
    double actor_lr = 1e-3;        ///< Adam (ALGORITHMS.md: 1e-3 for both)
    double critic_lr = 1e-3;       ///< Adam
    double tau = 0.01;             ///< soft target updates
    double discount = 1.0;         ///< per step; AMC uses 1 (one reward per episode)
    int64_t batch = 64;            ///< transitions per update
    int64_t buffer = 2000;         ///< replay capacity (transitions)
    int64_t warmup = 25;           ///< episodes of uniformly random actions before learning
    double noise = 0.5;            ///< initial exploration sigma (in units of the [0, 1] action)
    double noise_decay = 0.99;     ///< sigma multiplier per episode after warm-up
    double baseline_decay = 0.95;  ///< moving average of episode rewards subtracted from them
    int64_t updates_per_step = 1;  ///< gradient updates per transition after warm-up
    uint64_t seed = 0;
};

/// DDPG over actions in [0, 1] (a learner maps them onto its range): actor and critic MLPs with
/// target networks, a replay buffer, truncated-normal exploration noise decaying per episode,
/// uniformly random warm-up episodes, and the episode's reward (minus a moving-average baseline)
/// given to each of its transitions, as in AMC.
///
/// Example:
///   DdpgAgent agent(state_dim, {});
///   for (episode...) {
///     for (t...) actions[t] = agent.act(state[t]);   // then clip to the budget
///     agent.end_episode(states, actions, reward);
///   }
class DdpgAgent {
public:
    DdpgAgent(int64_t state_dim, DdpgOptions options);
    ~DdpgAgent();
    DdpgAgent(const DdpgAgent&) = delete;
    DdpgAgent& operator=(const DdpgAgent&) = delete;

    /// The action for `state` in this episode: uniform during warm-up, else the actor's output
    /// plus truncated-normal noise, in [0, 1].
    double act(const std::vector<double>& state);
    /// The actor's action without noise (the learned policy).
    double policy(const std::vector<double>& state) const;
    /// Ends an episode: its states and the actions actually taken (after any clipping) get the
    /// episode's reward; then the networks learn (after warm-up) and the noise decays.
    void end_episode(const std::vector<std::vector<double>>& states,
                     const std::vector<double>& actions,
                     double reward);

    int64_t episodes() const { return episodes_; }
    double noise() const { return sigma_; }

private:
    struct Nets;
    std::unique_ptr<Nets> nets_;
    DdpgOptions options_;
    int64_t state_dim_;
    int64_t episodes_ = 0;
    double sigma_;
    double baseline_ = 0;
    bool has_baseline_ = false;
    std::mt19937_64 rng_;
    struct Transition {
        std::vector<double> state, next_state;
        double action = 0, reward = 0;
        bool done = false;
    };
    std::deque<Transition> replay_;

    void learn();
};

/// What a learner hands the search: its decision points and how to score a policy. Actions are in
/// [lo, hi] (kept ratio, 1 − sparsity, bits, ...); the agent sees them mapped onto [0, 1].
struct SearchSpace {
    /// Per decision point, its static state features (AMC: type, channels, kernel, stride,
    /// feature-map size, cost...), each roughly in [0, 1]. All points have the same count.
    std::vector<std::vector<double>> features;
    double lo = 0.2, hi = 1.0;
    /// The largest action for point t given the actions of the points before it, such that the
    /// budget can still be met with the later points at `lo`.
    std::function<double(size_t t, const std::vector<double>& earlier)> max_action;
    /// The fraction of the budgeted resource a full policy uses (MACs kept, size, latency...).
    std::function<double(const std::vector<double>& actions)> cost;
    /// The reward of a full policy (e.g. the validation top-1 of the candidate it yields) and the
    /// values of `metric_names` for the episode log (e.g. top-1 and latency when the reward
    /// combines them).
    struct Score {
        double reward = 0;
        std::vector<double> metrics;
        Score(double r = 0, std::vector<double> m = {}) : reward(r), metrics(std::move(m)) {}
    };
    std::function<Score(const std::vector<double>& actions)> reward;
    std::vector<std::string> metric_names;
    /// Optional: a key equal for policies that yield the same candidate (e.g. the kept channel
    /// counts), so that a rerank does not score one candidate twice. Empty: the actions.
    std::function<std::string(const std::vector<double>& actions)> identity;
};

struct SearchOptions {
    int64_t episodes = 100;  ///< including the agent's warm-up episodes
    DdpgOptions agent;
    std::string csv_path;  ///< episode log (written atomically after every episode), or empty
    /// Continue from the episodes logged in `csv_path` (if it exists): they are replayed — the
    /// agent takes the same actions and gets the logged rewards, without scoring — so the search
    /// ends with the same best policy as an uninterrupted one. A rerank keeps the scores of the
    /// candidates logged in `rerank_csv_path` and scores the rest.
    bool resume = false;
    std::string plot_path;  ///< SVG chart of the rewards (rewritten after every episode), or empty
    /// Called after every episode (progress): episode index, its reward, the best so far.
    std::function<void(int64_t, double, double)> progress;
    /// A policy the search must beat, scored by the caller (e.g. the uniform allocation): when
    /// no episode's reward exceeds `baseline_score`, the result is the baseline. Empty: none.
    std::vector<double> baseline;
    SearchSpace::Score baseline_score;
    /// Reranking against the winner's curse (the best of many noisy rewards is biased upwards):
    /// the `rerank` best distinct episodes and the baseline are scored again by `rerank_score`
    /// (slower and more faithful: longer training, more validation images; same metric names),
    /// and the highest of those is the result, the baseline on a tie. 0: off.
    int64_t rerank = 0;
    std::function<SearchSpace::Score(const std::vector<double>& actions)> rerank_score;
    std::string rerank_csv_path;  ///< the rerank's log (written atomically per candidate), or empty
};

struct SearchResult {
    std::vector<double> best;  ///< the best policy: the best episode's actions, or the baseline
    double best_reward = 0;
    double best_cost = 0;
    std::vector<double> best_metrics;  ///< its metric_names values
    bool baseline_kept = false;        ///< no episode beat the baseline
    double agent_best_reward = 0;      ///< the best episode's reward (baseline or not)
    std::vector<double> agent_best_metrics;
    int64_t episodes = 0;
    int64_t resumed = 0;  ///< episodes replayed from the log
    /// The candidates a rerank scored (baseline first), with the episodes' and the rerank's
    /// scores; when it ran, `best`, `best_reward` and `best_metrics` are the rerank's winner's.
    struct Reranked {
        int64_t episode = -1;  ///< -1: the baseline
        double reward = 0;     ///< the episode's reward (the baseline's score)
        SearchSpace::Score score;
        std::vector<double> actions;
    };
    std::vector<Reranked> reranked;
};

/// Per-layer bit widths under a mean-bits budget (HAQ), shared by the bit-width searches: an action
/// a means floor(a) bits, clamped to [min_bits, max_bits]; the budget is a `weights`-weighted mean
/// of at most avg_bits (weights: each layer's parameters, or its non-zeros).
struct BitsBudget {
    std::vector<double> weights;
    double avg_bits = 4;
    int min_bits = 2, max_bits = 8;

    int bits_of(double action) const;
    /// The weighted mean bits of `actions` (missing trailing layers count at min_bits).
    double mean_bits(const std::vector<double>& actions) const;
    /// Sets the space's range (floor gives every width an equal share), cost (mean bits /
    /// max_bits) and max_action (what the budget allows with the later layers at min_bits).
    void describe(SearchSpace& space) const;
};

/// Runs the DDPG search: each episode visits the decision points in order (state = the point's
/// features, its position, the previous action and the budget used so far), clips each action to
/// `max_action`, scores the policy, and keeps the best.
SearchResult run_search(const SearchSpace& space, const SearchOptions& options);

}  // namespace pocketflow
