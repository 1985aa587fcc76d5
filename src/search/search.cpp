// SPDX-License-Identifier: Apache-2.0
// The episode loop of the compression search: states, budget clipping, rewards, the episode log.
#include "pocketflow/search.h"

#include <algorithm>

#include <fmt/format.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow {

SearchResult run_search(const SearchSpace& space, const SearchOptions& options) {
    const size_t points = space.features.size();
    PF_CHECK(points > 0 && space.max_action && space.cost && space.reward, Error,
             "a search needs decision points, max_action, cost and reward");
    PF_CHECK(space.lo < space.hi, Error, "search action range [{}, {}] is empty", space.lo,
             space.hi);
    const size_t dim = space.features.front().size() + 4;
    DdpgAgent agent(static_cast<int64_t>(dim), options.agent);
    const double width = space.hi - space.lo;
    SearchResult result;
    result.best_reward = -1e300;
    std::string csv = "episode,reward,cost";
    for (size_t t = 0; t < points; ++t) {
        csv += fmt::format(",a{}", t);
    }
    csv += "\n";
    for (int64_t episode = 0; episode < options.episodes; ++episode) {
        std::vector<std::vector<double>> states;
        std::vector<double> actions, taken;  // taken: in [lo, hi]; actions: the agent's [0, 1]
        double previous = 1;
        for (size_t t = 0; t < points; ++t) {
            // Budget features: the cost with the later points at their largest and smallest.
            std::vector<double> high = taken, low = taken;
            high.resize(points, space.hi);
            low.resize(points, space.lo);
            std::vector<double> s = space.features[t];
            s.push_back(static_cast<double>(t) / static_cast<double>(points));
            s.push_back(previous);
            s.push_back(space.cost(high));
            s.push_back(space.cost(low));
            const double limit = std::clamp(space.max_action(t, taken), space.lo, space.hi);
            const double a = std::min(space.lo + agent.act(s) * width, limit);
            states.push_back(std::move(s));
            taken.push_back(a);
            actions.push_back((a - space.lo) / width);
            previous = actions.back();
        }
        const double reward = space.reward(taken);
        const double cost = space.cost(taken);
        agent.end_episode(states, actions, reward);
        if (reward > result.best_reward) {
            result.best_reward = reward;
            result.best = taken;
            result.best_cost = cost;
        }
        result.episodes = episode + 1;
        csv += fmt::format("{},{:.6g},{:.6g}", episode, reward, cost);
        for (double a : taken) {
            csv += fmt::format(",{:.4f}", a);
        }
        csv += "\n";
        if (!options.csv_path.empty()) {
            write_file_atomic(options.csv_path, csv);
        }
        if (options.progress) {
            options.progress(episode, reward, result.best_reward);
        }
    }
    return result;
}

}  // namespace pocketflow
