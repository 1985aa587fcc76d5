// SPDX-License-Identifier: Apache-2.0
// The search machinery: budget arithmetic and the DDPG agent on toy problems with known optima.
#include "pocketflow/search.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <gtest/gtest.h>

namespace pocketflow {
namespace {

TEST(SearchTest, EveryEpisodeClippedToTheBudgetMeetsIt) {
    // Five layers; a is the kept ratio; each layer's cost is fixed + linear · a.
    std::vector<ActionCost> costs = {
        {0, 10, 0.2, 1}, {2, 30, 0.2, 1}, {0, 25, 0.1, 1}, {1, 40, 0.2, 1}, {0, 5, 0.5, 1}};
    const double full = 3 + 10 + 30 + 25 + 40 + 5;
    const double budget = 0.5 * full;
    ASSERT_TRUE(budget_reachable(costs, budget));
    EXPECT_FALSE(budget_reachable(costs, 0.1 * full));
    std::mt19937_64 rng(1);
    std::uniform_real_distribution<double> u(0, 1);
    for (int episode = 0; episode < 1000; ++episode) {
        double spent = 0;
        for (size_t t = 0; t < costs.size(); ++t) {
            const double limit = max_action_within_budget(costs, t, spent, budget);
            const double a =
                std::clamp(costs[t].lo + u(rng) * (costs[t].hi - costs[t].lo), costs[t].lo, limit);
            spent += costs[t].fixed + costs[t].linear * a;
        }
        EXPECT_LE(spent, budget * (1 + 1e-9)) << episode;
    }
    // The last layer gets exactly what is left.
    EXPECT_NEAR(max_action_within_budget(costs, 4, budget - 5 * 0.8, budget), 0.8, 1e-12);
    // Nothing left: the smallest action.
    EXPECT_EQ(max_action_within_budget(costs, 0, budget, budget), 0.2);
}

/// One search on a toy problem: each episode visits five layers; the reward is highest (0) at
/// the allocation `best`. Returns the actor's mean distance from `best` per layer after
/// `episodes`, and sets `best_reward` to the best episode's reward.
double toy_search(uint64_t seed, int episodes, double& best_reward, double& noise) {
    const std::vector<double> best = {0.2, 0.8, 0.5, 0.3, 0.7};
    const size_t layers = best.size();
    DdpgOptions o;
    o.seed = seed;
    o.hidden = 64;
    o.warmup = 20;
    DdpgAgent agent(static_cast<int64_t>(layers), o);
    auto state = [&](size_t t) {
        std::vector<double> s(layers, 0.0);
        s[t] = 1.0;  // the layer's index, one-hot
        return s;
    };
    best_reward = -1e9;
    for (int episode = 0; episode < episodes; ++episode) {
        std::vector<std::vector<double>> states;
        std::vector<double> actions;
        double reward = 0;
        for (size_t t = 0; t < layers; ++t) {
            states.push_back(state(t));
            actions.push_back(agent.act(states.back()));
            reward -= (actions.back() - best[t]) * (actions.back() - best[t]);
        }
        best_reward = std::max(best_reward, reward);
        agent.end_episode(states, actions, reward);
    }
    double error = 0;
    for (size_t t = 0; t < layers; ++t) {
        error += std::abs(agent.policy(state(t)) - best[t]);
    }
    noise = agent.noise();
    return error / static_cast<double>(layers);
}

TEST(SearchTest, DdpgFindsAKnownBestAllocation) {
    // Five seeded searches of 200 episodes (20 of them random warm-up). An untrained actor is
    // about 0.25 from the best per layer (random actions: a squared error of 0.5 per episode).
    std::vector<double> errors;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
        double best_reward = 0, noise = 0;
        errors.push_back(toy_search(seed, 200, best_reward, noise));
        EXPECT_GT(best_reward, -0.06) << "seed " << seed;  // the best episode: near 0
        EXPECT_LT(noise, 0.2) << "seed " << seed;          // exploration decayed
    }
    std::sort(errors.begin(), errors.end());
    EXPECT_LT(errors[2], 0.1) << "median distance of the learned policy from the best";
    double untrained_best = 0, noise = 0;
    EXPECT_GT(toy_search(1, 20, untrained_best, noise), 0.15);  // the test can fail
}

}  // namespace
}  // namespace pocketflow
