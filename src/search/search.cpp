// SPDX-License-Identifier: Apache-2.0
// The episode loop of the compression search: states, budget clipping, rewards, the episode log.
#include "pocketflow/search.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace {

/// The rows of an earlier run's log (episodes, or rerank candidates), each as numbers and as
/// its text, after checking that the header is the one this search writes. No file: no rows.
struct LogRows {
    std::vector<std::vector<double>> numbers;
    std::vector<std::string> lines;
};

LogRows read_log_rows(const std::string& path, const std::string& header, const char* what) {
    LogRows log;
    std::ifstream in(path);
    if (!in) {
        return log;  // nothing finished yet
    }
    std::string line;
    std::getline(in, line);
    PF_CHECK(line + "\n" == header, InputError,
             "cannot resume the {} from {}: its columns ({}) are not this search's ({}); delete "
             "the file to start it over",
             what, path, line, header.substr(0, header.size() - 1));
    for (int64_t row = 0; std::getline(in, line); ++row) {
        std::vector<double> fields;
        std::stringstream ss(line);
        std::string field;
        while (std::getline(ss, field, ',')) {
            char* end = nullptr;
            fields.push_back(std::strtod(field.c_str(), &end));
            PF_CHECK(end != field.c_str() && *end == 0, InputError,
                     "cannot resume the {} from {}: line {} has '{}', not a number", what, path,
                     row + 2, field);
        }
        log.numbers.push_back(std::move(fields));
        log.lines.push_back(line);
    }
    return log;
}

/// The rewards and actions of the finished episodes in an earlier run's episode log.
struct EpisodeLog {
    std::vector<SearchSpace::Score> scores;
    std::vector<std::vector<double>> actions;
};

EpisodeLog read_episode_log(const std::string& path,
                            const std::string& header,
                            size_t metrics,
                            size_t points) {
    EpisodeLog log;
    const LogRows rows = read_log_rows(path, header, "search");
    for (size_t row = 0; row < rows.numbers.size(); ++row) {
        const std::vector<double>& fields = rows.numbers[row];
        PF_CHECK(fields.size() == 3 + metrics + points && fields[0] == static_cast<double>(row),
                 InputError,
                 "cannot resume the search from {}: line {} is not episode {} with {} actions",
                 path, row + 2, row, points);
        const auto first_action = fields.begin() + 3 + static_cast<std::ptrdiff_t>(metrics);
        log.scores.emplace_back(fields[1], std::vector<double>(fields.begin() + 3, first_action));
        log.actions.emplace_back(first_action, fields.end());
    }
    return log;
}

/// The episodes as an SVG chart: each episode's reward (dots) and the best so far (line).
std::string episode_plot(const std::vector<double>& rewards) {
    const double w = 640, h = 360, left = 60, right = 20, top = 20, bottom = 40;
    double lo = rewards.front(), hi = rewards.front();
    for (double r : rewards) {
        lo = std::min(lo, r);
        hi = std::max(hi, r);
    }
    if (hi - lo < 1e-12) {
        hi = lo + 1;
    }
    const double n = static_cast<double>(std::max<size_t>(rewards.size() - 1, 1));
    auto x = [&](size_t i) { return left + (w - left - right) * static_cast<double>(i) / n; };
    auto y = [&](double r) { return top + (h - top - bottom) * (hi - r) / (hi - lo); };
    std::string svg = fmt::format(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
        "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
        "fill=\"white\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n"
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        w, h, left, h - bottom, w - right, h - bottom, left, top, left, h - bottom);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.4g}</text>\n", left - 4,
                       top + 4, hi);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.4g}</text>\n", left - 4,
                       h - bottom, lo);
    svg += fmt::format(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">episode (1–{}); dots: reward, line: best "
        "so far</text>\n",
        (w + left) / 2, h - 10, rewards.size());
    std::string best_line;
    double best = -1e300;
    for (size_t i = 0; i < rewards.size(); ++i) {
        svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2\" fill=\"#888\"/>\n", x(i),
                           y(rewards[i]));
        best = std::max(best, rewards[i]);
        best_line += fmt::format("{:.1f},{:.1f} ", x(i), y(best));
    }
    svg += fmt::format(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#c00\" stroke-width=\"2\"/>\n</svg>\n",
        best_line);
    return svg;
}

}  // namespace

int BitsBudget::bits_of(double action) const {
    return std::clamp(static_cast<int>(std::floor(action)), min_bits, max_bits);
}

double BitsBudget::mean_bits(const std::vector<double>& actions) const {
    double sum = 0, total = 0;
    for (size_t i = 0; i < weights.size(); ++i) {
        sum += weights[i] * bits_of(i < actions.size() ? actions[i] : min_bits);
        total += weights[i];
    }
    return sum / std::max(1.0, total);
}

void BitsBudget::describe(SearchSpace& space) const {
    space.lo = min_bits;
    space.hi = max_bits + 0.999;
    space.cost = [this](const std::vector<double>& a) { return mean_bits(a) / max_bits; };
    space.max_action = [this](size_t t, const std::vector<double>& earlier) {
        double total = 0, spent = 0, rest = 0;
        for (size_t i = 0; i < weights.size(); ++i) {
            total += weights[i];
            if (i < earlier.size()) {
                spent += weights[i] * bits_of(earlier[i]);
            } else if (i > t) {
                rest += weights[i] * min_bits;
            }
        }
        return weights[t] > 0 ? (avg_bits * total - spent - rest) / weights[t]
                              : static_cast<double>(max_bits) + 0.999;
    };
}

namespace {

SearchResult search_here(const SearchSpace& space, const SearchOptions& options);

nlohmann::json reranked_json(const std::vector<SearchResult::Reranked>& reranked) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& c : reranked) {
        out.push_back({{"episode", c.episode},
                       {"reward", c.reward},
                       {"rerank_reward", c.score.reward},
                       {"metrics", c.score.metrics},
                       {"actions", c.actions}});
    }
    return out;
}

}  // namespace

SearchResult run_search(const SearchSpace& space, const SearchOptions& options) {
    // Data-parallel workers: rank 0 searches (its run directory holds the episode log), the
    // others receive its result.
    const std::string text = dist::run_once([&] {
        const SearchResult r = search_here(space, options);
        return json_text(nlohmann::json{{"best", r.best},
                                        {"best_reward", r.best_reward},
                                        {"best_cost", r.best_cost},
                                        {"best_metrics", r.best_metrics},
                                        {"baseline_kept", r.baseline_kept},
                                        {"agent_best_reward", r.agent_best_reward},
                                        {"agent_best_metrics", r.agent_best_metrics},
                                        {"episodes", r.episodes},
                                        {"resumed", r.resumed},
                                        {"reranked", reranked_json(r.reranked)}});
    });
    const auto j = nlohmann::json::parse(text);
    SearchResult r;
    j.at("best").get_to(r.best);
    j.at("best_reward").get_to(r.best_reward);
    j.at("best_cost").get_to(r.best_cost);
    j.at("best_metrics").get_to(r.best_metrics);
    j.at("baseline_kept").get_to(r.baseline_kept);
    j.at("agent_best_reward").get_to(r.agent_best_reward);
    j.at("agent_best_metrics").get_to(r.agent_best_metrics);
    j.at("episodes").get_to(r.episodes);
    j.at("resumed").get_to(r.resumed);
    for (const auto& c : j.at("reranked")) {
        SearchResult::Reranked one;
        c.at("episode").get_to(one.episode);
        c.at("reward").get_to(one.reward);
        c.at("rerank_reward").get_to(one.score.reward);
        c.at("metrics").get_to(one.score.metrics);
        c.at("actions").get_to(one.actions);
        r.reranked.push_back(std::move(one));
    }
    return r;
}

namespace {

/// Scores the baseline and the `options.rerank` best distinct episodes with rerank_score and
/// makes the highest the result (the baseline on a tie).
void rerank(const SearchSpace& space,
            const SearchOptions& options,
            const std::vector<std::vector<double>>& policies,
            const std::vector<double>& rewards,
            SearchResult& result) {
    PF_CHECK(options.rerank_score != nullptr, Error, "a rerank needs rerank_score");
    auto key = [&](const std::vector<double>& a) {
        return space.identity ? space.identity(a) : fmt::format("{}", fmt::join(a, ","));
    };
    std::vector<SearchResult::Reranked> candidates;
    std::set<std::string> seen;
    if (!options.baseline.empty()) {
        candidates.push_back({-1, options.baseline_score.reward, {}, options.baseline});
        seen.insert(key(options.baseline));
    }
    std::vector<size_t> order(rewards.size());
    std::iota(order.begin(), order.end(), size_t{0});
    auto rank = [&](size_t e) {  // a NaN reward ranks last
        return std::isnan(rewards[e]) ? -std::numeric_limits<double>::infinity() : rewards[e];
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return rank(a) > rank(b); });
    int64_t taken = 0;
    for (size_t e : order) {
        if (taken == options.rerank) {
            break;
        }
        if (seen.insert(key(policies[e])).second) {
            candidates.push_back({static_cast<int64_t>(e), rewards[e], {}, policies[e]});
            ++taken;
        }
    }
    PF_CHECK(!candidates.empty(), Error, "a rerank needs a baseline or an episode");
    std::string csv = "candidate,episode,reward,rerank_reward";
    for (const auto& name : space.metric_names) {
        csv += "," + name;
    }
    for (size_t t = 0; t < space.features.size(); ++t) {
        csv += fmt::format(",a{}", t);
    }
    csv += "\n";
    // Resumed: the candidates an earlier run finished keep their logged scores (each is written
    // as soon as it is scored), if they are the same candidates.
    LogRows logged;
    if (options.resume && !options.rerank_csv_path.empty()) {
        logged = read_log_rows(options.rerank_csv_path, csv, "search's rerank");
        PF_CHECK(logged.numbers.size() <= candidates.size(), InputError,
                 "cannot resume the search's rerank from {}: it has {} candidates, this rerank {}",
                 options.rerank_csv_path, logged.numbers.size(), candidates.size());
    }
    const size_t metrics = space.metric_names.size();
    size_t winner = 0;
    for (size_t c = 0; c < candidates.size(); ++c) {
        auto& cand = candidates[c];
        const std::string what = cand.episode < 0 ? std::string("the baseline")
                                                  : fmt::format("episode {}", cand.episode);
        if (c < logged.numbers.size()) {
            const std::vector<double>& row = logged.numbers[c];
            bool same = row.size() == 4 + metrics + cand.actions.size() &&
                        row[0] == static_cast<double>(c) &&
                        row[1] == static_cast<double>(cand.episode);
            for (size_t t = 0; same && t < cand.actions.size(); ++t) {
                same = std::abs(row[4 + metrics + t] - cand.actions[t]) <= 6e-5;  // 4 decimals
            }
            PF_CHECK(same, InputError,
                     "cannot resume the search's rerank from {}: line {} is not candidate {} "
                     "({}) with these actions; the episodes or settings differ from the run that "
                     "wrote it (delete the file to rerun the rerank)",
                     options.rerank_csv_path, c + 2, c, what);
            cand.score = SearchSpace::Score(
                row[3],
                std::vector<double>(row.begin() + 4,
                                    row.begin() + 4 + static_cast<std::ptrdiff_t>(metrics)));
            if (c > 0 && cand.score.reward > candidates[winner].score.reward) {
                winner = c;
            }
            spdlog::info("search: rerank {}/{}: {} scored {:.4g} before the interruption", c + 1,
                         candidates.size(), what, cand.score.reward);
            csv += logged.lines[c] + "\n";
            continue;
        }
        spdlog::info("search: rerank {}/{}: {} (reward {:.4g})", c + 1, candidates.size(), what,
                     cand.reward);
        cand.score = options.rerank_score(cand.actions);
        PF_CHECK(cand.score.metrics.size() == space.metric_names.size(), Error,
                 "the search's rerank gave {} metrics for {} names", cand.score.metrics.size(),
                 space.metric_names.size());
        if (c > 0 && cand.score.reward > candidates[winner].score.reward) {
            winner = c;
        }
        spdlog::info("search: rerank {}/{}: {} scores {:.4g} (best {:.4g}, {})", c + 1,
                     candidates.size(), what, cand.score.reward, candidates[winner].score.reward,
                     candidates[winner].episode < 0
                         ? std::string("the baseline")
                         : fmt::format("episode {}", candidates[winner].episode));
        csv += fmt::format("{},{},{},{}", c, cand.episode, cand.reward, cand.score.reward);
        for (double m : cand.score.metrics) {
            csv += fmt::format(",{}", m);
        }
        for (double a : cand.actions) {
            csv += fmt::format(",{:.4f}", a);
        }
        csv += "\n";
        if (!options.rerank_csv_path.empty()) {
            write_file_atomic(options.rerank_csv_path, csv);
        }
    }
    const auto& best = candidates[winner];
    result.best = best.actions;
    result.best_reward = best.score.reward;
    result.best_cost = space.cost(best.actions);
    result.best_metrics = best.score.metrics;
    result.baseline_kept = best.episode < 0;
    result.reranked = std::move(candidates);
}

SearchResult search_here(const SearchSpace& space, const SearchOptions& options) {
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
    for (const auto& name : space.metric_names) {
        csv += "," + name;
    }
    for (size_t t = 0; t < points; ++t) {
        csv += fmt::format(",a{}", t);
    }
    csv += "\n";
    EpisodeLog log;
    std::vector<double> rewards;                // every episode's, for the chart
    std::vector<std::vector<double>> policies;  // every episode's actions, for a rerank
    if (options.resume && !options.csv_path.empty()) {
        log = read_episode_log(options.csv_path, csv, space.metric_names.size(), points);
        PF_CHECK(static_cast<int64_t>(log.scores.size()) <= options.episodes, InputError,
                 "cannot resume the search from {}: it has {} episodes, the search {}",
                 options.csv_path, log.scores.size(), options.episodes);
        result.resumed = static_cast<int64_t>(log.scores.size());
        if (result.resumed > 0) {
            spdlog::info("search: resuming after episode {} of {} (replaying {})", result.resumed,
                         options.episodes, options.csv_path);
        }
    }
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
        // A logged episode is replayed: the agent takes the same actions (same seed, same
        // updates) and gets the logged reward, so the search continues exactly where it stopped.
        const bool replay = episode < result.resumed;
        if (replay) {
            const auto& logged = log.actions[static_cast<size_t>(episode)];
            for (size_t t = 0; t < points; ++t) {
                PF_CHECK(std::abs(logged[t] - taken[t]) <= 1e-4, InputError,
                         "cannot resume the search from {}: episode {} took action {} at point "
                         "{}, the log says {}: the settings or the model differ from the "
                         "interrupted search's; delete the file to start the search over",
                         options.csv_path, episode, taken[t], t, logged[t]);
            }
        }
        const SearchSpace::Score score =
            replay ? log.scores[static_cast<size_t>(episode)] : space.reward(taken);
        PF_CHECK(score.metrics.size() == space.metric_names.size(), Error,
                 "the search's reward gave {} metrics for {} names", score.metrics.size(),
                 space.metric_names.size());
        const double reward = score.reward;
        const double cost = space.cost(taken);
        agent.end_episode(states, actions, reward);
        if (reward > result.best_reward) {
            result.best_reward = reward;
            result.best = taken;
            result.best_cost = cost;
            result.best_metrics = score.metrics;
        }
        result.episodes = episode + 1;
        csv += fmt::format("{},{},{}", episode, reward, cost);  // shortest exact form
        for (double m : score.metrics) {
            csv += fmt::format(",{}", m);
        }
        for (double a : taken) {
            csv += fmt::format(",{:.4f}", a);
        }
        csv += "\n";
        rewards.push_back(reward);
        policies.push_back(taken);
        if (!options.csv_path.empty() && !replay) {
            write_file_atomic(options.csv_path, csv);
        }
        if (!options.plot_path.empty() && !replay) {
            write_file_atomic(options.plot_path, episode_plot(rewards));
        }
        if (options.progress && !replay) {
            options.progress(episode, reward, result.best_reward);
        }
    }
    result.agent_best_reward = result.best_reward;
    result.agent_best_metrics = result.best_metrics;
    if (options.rerank > 0) {
        rerank(space, options, policies, rewards, result);
        return result;
    }
    if (!options.baseline.empty() && options.baseline_score.reward > result.best_reward) {
        spdlog::warn(
            "search: no episode beat the baseline (best reward {:.4g}, baseline {:.4g}): "
            "keeping the baseline",
            result.best_reward, options.baseline_score.reward);
        result.best = options.baseline;
        result.best_reward = options.baseline_score.reward;
        result.best_cost = space.cost(options.baseline);
        result.best_metrics = options.baseline_score.metrics;
        result.baseline_kept = true;
    }
    return result;
}

}  // namespace

}  // namespace pocketflow
