// SPDX-License-Identifier: Apache-2.0
// The search machinery: budget arithmetic and the DDPG agent on toy problems with known optima.
#include "pocketflow/search.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "pocketflow/bayesopt.h"
#include "pocketflow/error.h"
#include "pocketflow/latency.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

#include "support/test_util.h"

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

/// Four points, actions in [0.2, 1], budget: mean action ≤ 0.5; the best allocation within the
/// budget puts everything into point 2.
SearchSpace toy_space() {
    SearchSpace space;
    const size_t points = 4;
    for (size_t t = 0; t < points; ++t) {
        std::vector<double> f(points, 0.0);
        f[t] = 1.0;
        space.features.push_back(f);
    }
    space.lo = 0.2;
    space.hi = 1.0;
    const double budget = 0.5;  // mean action
    space.cost = [](const std::vector<double>& a) {
        double sum = 0;
        for (double x : a) {
            sum += x;
        }
        return sum / static_cast<double>(a.size());
    };
    space.max_action = [=](size_t t, const std::vector<double>& earlier) {
        double spent = 0;
        for (double x : earlier) {
            spent += x;
        }
        const double rest = 0.2 * static_cast<double>(points - t - 1);
        return budget * static_cast<double>(points) - spent - rest;
    };
    space.reward = [](const std::vector<double>& a) { return a[2] - 0.1 * (a[0] + a[1] + a[3]); };
    return space;
}

TEST(SearchTest, RunSearchClipsEveryEpisodeToTheBudgetAndLogsIt) {
    testing::TempDir dir;
    const double budget = 0.5;
    SearchSpace space = toy_space();
    SearchOptions o;
    o.episodes = 60;
    o.agent.warmup = 10;
    o.agent.hidden = 32;
    o.csv_path = dir.file("episodes.csv");
    o.plot_path = dir.file("episodes.svg");
    int calls = 0;
    o.progress = [&](int64_t, double, double) { ++calls; };
    SearchResult r = run_search(space, o);
    EXPECT_EQ(r.episodes, 60);
    EXPECT_EQ(calls, 60);
    EXPECT_LE(r.best_cost, budget + 1e-9);
    std::ifstream csv(o.csv_path);
    std::string line;
    std::getline(csv, line);
    EXPECT_EQ(line, "episode,reward,cost,a0,a1,a2,a3");
    int rows = 0;
    while (std::getline(csv, line)) {
        const size_t a = line.find(','), b = line.find(',', a + 1), c = line.find(',', b + 1);
        EXPECT_LE(std::stod(line.substr(b + 1, c - b - 1)), budget + 1e-6) << line;  // cost
        ++rows;
    }
    EXPECT_EQ(rows, 60);
    EXPECT_GT(r.best[2], 0.6);  // most of the budget went to the point that pays
    // The chart: one dot per episode and the best-so-far line.
    std::ifstream svg(o.plot_path);
    const std::string plot(std::istreambuf_iterator<char>(svg), {});
    size_t dots = 0;
    for (size_t at = plot.find("<circle"); at != std::string::npos;
         at = plot.find("<circle", at + 1)) {
        ++dots;
    }
    EXPECT_EQ(dots, 60u);
    EXPECT_NE(plot.find("<polyline"), std::string::npos);
}

TEST(SearchTest, ABaselineNoEpisodeBeatsIsKept) {
    SearchOptions o;
    o.episodes = 12;
    o.agent.warmup = 4;
    o.agent.hidden = 16;
    o.baseline = {0.5, 0.5, 0.5, 0.5};
    o.baseline_score = SearchSpace::Score(100.0);  // above any reachable reward (< 1)
    const SearchResult kept = run_search(toy_space(), o);
    EXPECT_TRUE(kept.baseline_kept);
    EXPECT_EQ(kept.best, o.baseline);
    EXPECT_EQ(kept.best_reward, 100.0);
    EXPECT_DOUBLE_EQ(kept.best_cost, 0.5);
    EXPECT_LT(kept.agent_best_reward, 1.0);
    o.baseline_score = SearchSpace::Score(-100.0);  // below every episode
    const SearchResult beaten = run_search(toy_space(), o);
    EXPECT_FALSE(beaten.baseline_kept);
    EXPECT_EQ(beaten.best_reward, beaten.agent_best_reward);
    EXPECT_NE(beaten.best, o.baseline);
}

/// A small search over toy_space with a rerank of its 3 best distinct policies and the baseline
/// (all 0.5, scored -1), logged in `dir`.
SearchOptions rerank_options(const testing::TempDir& dir, int64_t episodes) {
    SearchOptions o;
    o.episodes = episodes;
    o.agent.warmup = 10;
    o.agent.hidden = 16;
    o.baseline = {0.5, 0.5, 0.5, 0.5};
    o.baseline_score = SearchSpace::Score(-1.0);
    o.rerank = 3;
    o.rerank_csv_path = dir.file("rerank.csv");
    return o;
}

TEST(SearchTest, RerankRescoresTheBestDistinctEpisodesAndTheBaseline) {
    // The episodes' reward favours a[2]; the rerank's (the "truth") wants a[2] near 0.5. The
    // rerank must score the baseline and the 3 best episodes with distinct identities (a[2] to one
    // decimal), and return the best of those under the rerank's score.
    testing::TempDir dir;
    SearchSpace space = toy_space();
    std::vector<std::pair<std::vector<double>, double>> episodes;
    const auto episode_reward = space.reward;
    space.reward = [&](const std::vector<double>& a) {
        const SearchSpace::Score s = episode_reward(a);
        episodes.emplace_back(a, s.reward);
        return s;
    };
    space.identity = [](const std::vector<double>& a) { return fmt::format("{:.1f}", a[2]); };
    auto truth = [](const std::vector<double>& a) { return -std::pow(a[2] - 0.5, 2); };
    SearchOptions o = rerank_options(dir, 40);
    std::vector<std::vector<double>> rescored;
    o.rerank_score = [&](const std::vector<double>& a) {
        rescored.push_back(a);
        return SearchSpace::Score(truth(a));
    };
    const SearchResult r = run_search(space, o);
    ASSERT_EQ(episodes.size(), 40u);
    // Expected: the baseline, then the best episodes by reward whose identity is new.
    std::vector<size_t> order(episodes.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return episodes[a].second > episodes[b].second; });
    std::set<std::string> seen = {space.identity(o.baseline)};
    std::vector<int64_t> expected = {-1};
    for (size_t e : order) {
        if (expected.size() < 4 && seen.insert(space.identity(episodes[e].first)).second) {
            expected.push_back(static_cast<int64_t>(e));
        }
    }
    ASSERT_EQ(r.reranked.size(), 4u);
    ASSERT_EQ(rescored.size(), 4u);
    size_t best = 0;
    for (size_t c = 0; c < 4; ++c) {
        EXPECT_EQ(r.reranked[c].episode, expected[c]) << c;
        EXPECT_EQ(r.reranked[c].actions, rescored[c]);
        EXPECT_DOUBLE_EQ(r.reranked[c].score.reward, truth(rescored[c]));
        if (r.reranked[c].score.reward > r.reranked[best].score.reward) {
            best = c;
        }
    }
    EXPECT_EQ(r.best, r.reranked[best].actions);
    EXPECT_DOUBLE_EQ(r.best_reward, r.reranked[best].score.reward);
    EXPECT_EQ(r.baseline_kept, best == 0);
    EXPECT_TRUE(r.baseline_kept) << "a[2] = 0.5 is the truth's optimum";
    EXPECT_GT(r.agent_best_reward, o.baseline_score.reward);
    // The log: a header and one row per candidate.
    std::ifstream csv(o.rerank_csv_path);
    std::string line;
    std::getline(csv, line);
    EXPECT_EQ(line, "candidate,episode,reward,rerank_reward,a0,a1,a2,a3");
    int rows = 0;
    while (std::getline(csv, line)) {
        ++rows;
    }
    EXPECT_EQ(rows, 4);
    // A rerank that cannot tell the candidates apart keeps the baseline; one whose truth is the
    // episodes' own reward returns the best of them.
    o.rerank_score = [](const std::vector<double>&) { return SearchSpace::Score(0.0); };
    episodes.clear();
    EXPECT_TRUE(run_search(space, o).baseline_kept);
    o.rerank_score = [&](const std::vector<double>& a) { return episode_reward(a); };
    episodes.clear();
    const SearchResult same = run_search(space, o);
    EXPECT_FALSE(same.baseline_kept);
    EXPECT_DOUBLE_EQ(same.best_reward, same.agent_best_reward);
}

std::string read_all(const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(SearchTest, ResumedSearchEndsAsAnUninterruptedOne) {
    testing::TempDir dir;
    SearchOptions o;
    o.episodes = 40;
    o.agent.warmup = 8;
    o.agent.hidden = 32;
    o.agent.seed = 5;
    o.csv_path = dir.file("full.csv");
    const SearchResult full = run_search(toy_space(), o);

    // Killed while scoring episode 25: the log holds episodes 0..24.
    SearchSpace dying = toy_space();
    int calls = 0;
    auto reward = dying.reward;
    dying.reward = [&](const std::vector<double>& a) {
        if (++calls > 25) {
            throw std::runtime_error("killed");
        }
        return reward(a);
    };
    o.csv_path = dir.file("resumed.csv");
    EXPECT_THROW(run_search(dying, o), std::runtime_error);
    calls = 0;
    dying.reward = [&](const std::vector<double>& a) {
        ++calls;
        return reward(a);
    };
    o.resume = true;
    const SearchResult resumed = run_search(dying, o);
    EXPECT_EQ(resumed.resumed, 25);
    EXPECT_EQ(calls, 15);  // only the episodes not logged are scored
    EXPECT_EQ(resumed.best, full.best);
    EXPECT_EQ(resumed.best_reward, full.best_reward);
    EXPECT_EQ(read_all(dir.file("resumed.csv")), read_all(dir.file("full.csv")));

    // A log of another search (another seed takes other actions) is refused, not mixed in.
    o.agent.seed = 6;
    o.episodes = 41;
    EXPECT_THROW(run_search(toy_space(), o), InputError);
    // So is one with other columns.
    SearchSpace wider = toy_space();
    wider.features.push_back({0, 0, 0, 0});
    EXPECT_THROW(run_search(wider, o), InputError);
}

TEST(LatencyTableTest, MeasuresOnceThenReusesItsFile) {
    testing::TempDir dir;
    const Graph g = build_zoo_model("lenet5", 4, {1, 12, 12});
    LatencyOptions o;
    o.runtime = "libtorch";
    o.batch = 2;
    o.repeat = 2;
    const std::string path = dir.file("table.csv");
    LatencyTable first(o, path);
    const double ms = first.predict_ms(g);
    EXPECT_GE(ms, 0.0);
    // 2 convs + 3 linears, and the overhead of each distinct layer input (5 here).
    EXPECT_EQ(first.measured(), 10u);
    EXPECT_EQ(first.predict_ms(g), ms);  // nothing new to measure
    EXPECT_EQ(first.measured(), 10u);
    LatencyTable again(o, path);  // a resumed search: the file's entries, nothing measured
    EXPECT_EQ(again.size(), 10u);
    EXPECT_EQ(again.predict_ms(g), ms);
    EXPECT_EQ(again.measured(), 0u);
    o.batch = 4;  // measured another way: the file is not reused
    LatencyTable other(o, path);
    EXPECT_EQ(other.size(), 0u);
}

// Bayesian optimisation (bayesopt.h): hand-computed values, then a known optimum.

TEST(BayesOptTest, GpPosteriorAndLikelihoodMatchHandComputation) {
    // Two points, y = [1, -1] (already standardised), Matérn-5/2 with signal 1, length 1,
    // noise 0.1: k(0, 1) = (1 + √5 + 5/3) e^−√5 = 0.523994; numbers from the closed forms.
    Eigen::MatrixXd x(2, 1);
    x << 0, 1;
    Eigen::VectorXd y(2);
    y << 1, -1;
    GpHyper h;
    h.signal = 1;
    h.length = {1};
    h.noise = 0.1;
    Eigen::VectorXd a(1), b(1);
    a << 0;
    b << 1;
    EXPECT_NEAR(matern52(a, b, h), 0.523994, 1e-6);
    GaussianProcess gp;
    gp.fit(x, y, h);
    auto [mean, sd] = gp.predict(a);
    EXPECT_NEAR(mean, 0.979424, 1e-5);
    EXPECT_NEAR(sd, 0.099320, 1e-5);
    EXPECT_NEAR(gp.log_marginal_likelihood(h), -3.748635, 1e-5);
    // Far from the data: the prior (mean of the targets, full signal).
    Eigen::VectorXd far(1);
    far << 50;
    auto [m2, s2] = gp.predict(far);
    EXPECT_NEAR(m2, 0.0, 1e-9);
    EXPECT_NEAR(s2, 1.0, 1e-9);
}

TEST(BayesOptTest, ExpectedImprovementMatchesHandComputation) {
    // z = (1 − 0.5) / 2 = 0.25: 0.5 Φ(0.25) + 2 φ(0.25).
    EXPECT_NEAR(expected_improvement(1.0, 2.0, 0.5), 1.0726894, 1e-6);
    EXPECT_NEAR(expected_improvement(1.0, 0.0, 0.5), 0.5, 1e-12);  // certain gain
    EXPECT_NEAR(expected_improvement(0.0, 0.0, 0.5), 0.0, 1e-12);  // certain loss
    EXPECT_GT(expected_improvement(0.0, 1.0, 0.5), 0.0);           // uncertainty still pays
}

TEST(BayesOptTest, MarginalLikelihoodPicksTheDataLengthScale) {
    // A smooth function sampled densely: the fitted length-scale is long, not the shortest.
    Eigen::MatrixXd x(12, 1);
    Eigen::VectorXd y(12);
    for (int i = 0; i < 12; ++i) {
        x(i, 0) = i / 11.0;
        y[i] = std::sin(3 * x(i, 0));
    }
    GaussianProcess gp;
    gp.fit(x, y, 1);
    EXPECT_GT(gp.hyper().length[0], 0.3);
    EXPECT_LT(gp.hyper().noise, 0.05);
    Eigen::VectorXd p(1);
    p << 0.5;
    EXPECT_NEAR(gp.predict(p).first, std::sin(1.5), 0.01);
}

TEST(BayesOptTest, FindsAKnownOptimumInTwentyTrials) {
    // f = −(u0 − 0.3)² − (u1 − 0.7)²: 4 random points, then 16 EI proposals. Twenty random points
    // land within 0.05 of the optimum with probability ~15%; the GP must get there.
    auto f = [](const Eigen::VectorXd& u) {
        return -(u[0] - 0.3) * (u[0] - 0.3) - (u[1] - 0.7) * (u[1] - 0.7);
    };
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> unit(0, 1);
    Eigen::MatrixXd x(20, 2);
    Eigen::VectorXd y(20);
    for (int t = 0; t < 20; ++t) {
        Eigen::VectorXd u(2);
        if (t < 4) {
            u << unit(rng), unit(rng);
        } else {
            u = propose_next(x.topRows(t), y.head(t), static_cast<uint64_t>(t));
        }
        x.row(t) = u.transpose();
        y[t] = f(u);
    }
    EXPECT_GT(y.maxCoeff(), -0.0025);
}

TEST(SearchTest, ResumedRerankKeepsTheLoggedScores) {
    testing::TempDir dir;
    SearchSpace space = toy_space();
    space.identity = [](const std::vector<double>& a) { return fmt::format("{:.1f}", a[2]); };
    SearchOptions o = rerank_options(dir, 30);
    int scored = 0;
    o.rerank_score = [&](const std::vector<double>& a) {
        ++scored;
        return SearchSpace::Score(-std::pow(a[2] - 0.3, 2));
    };
    const SearchResult full = run_search(space, o);
    ASSERT_EQ(scored, 4);
    const std::string log = read_all(o.rerank_csv_path);

    // Killed after two candidates: the log holds the header and their rows.
    std::string partial;
    size_t at = 0;
    for (int line = 0; line < 3; ++line) {
        at = log.find('\n', at) + 1;
    }
    partial = log.substr(0, at);
    write_file_atomic(o.rerank_csv_path, partial);
    o.resume = true;
    scored = 0;
    const SearchResult resumed = run_search(space, o);
    EXPECT_EQ(scored, 2) << "candidates 0 and 1 keep their logged scores";
    EXPECT_EQ(resumed.best, full.best);
    EXPECT_DOUBLE_EQ(resumed.best_reward, full.best_reward);
    ASSERT_EQ(resumed.reranked.size(), full.reranked.size());
    for (size_t c = 0; c < full.reranked.size(); ++c) {
        EXPECT_NEAR(resumed.reranked[c].score.reward, full.reranked[c].score.reward, 1e-12) << c;
    }
    EXPECT_EQ(read_all(o.rerank_csv_path), log);

    // Finished: nothing is scored again. A log of other candidates is refused.
    scored = 0;
    run_search(space, o);
    EXPECT_EQ(scored, 0);
    std::string other = partial;
    other.replace(other.find("\n0,-1,") + 1, 5, "0,7,");
    write_file_atomic(o.rerank_csv_path, other);
    testing::expect_error<InputError>([&] { run_search(space, o); }, "line 2 is not candidate 0");
}

}  // namespace
}  // namespace pocketflow
