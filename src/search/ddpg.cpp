// SPDX-License-Identifier: Apache-2.0
// The DDPG agent of the compression search (AMC) and the budget arithmetic of its episodes.
#include <algorithm>
#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <torch/torch.h>

#include "pocketflow/error.h"
#include "pocketflow/search.h"

namespace pocketflow {

// ------------------------------------------------------------------------------------------------
// Budget

bool budget_reachable(const std::vector<ActionCost>& costs, double budget) {
    double cheapest = 0;
    for (const auto& c : costs) {
        cheapest += c.fixed + c.linear * c.lo;
    }
    return cheapest <= budget * (1 + 1e-12);
}

double max_action_within_budget(const std::vector<ActionCost>& costs,
                                size_t t,
                                double spent,
                                double budget) {
    PF_CHECK(t < costs.size(), Error, "decision point {} of {}", t, costs.size());
    double rest = 0;  // the later points at their cheapest
    for (size_t k = t + 1; k < costs.size(); ++k) {
        rest += costs[k].fixed + costs[k].linear * costs[k].lo;
    }
    const ActionCost& c = costs[t];
    const double room = budget - spent - rest - c.fixed;
    const double a = c.linear > 0 ? room / c.linear : c.hi;
    return std::clamp(a, c.lo, c.hi);
}

// ------------------------------------------------------------------------------------------------
// Networks

namespace {

/// Linear → LayerNorm → ReLU, twice, then a linear head (sigmoid for the actor).
struct MlpImpl : torch::nn::Module {
    MlpImpl(int64_t in, int64_t hidden, bool sigmoid)
        : fc1(register_module("fc1", torch::nn::Linear(in, hidden))),
          ln1(register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
          fc2(register_module("fc2", torch::nn::Linear(hidden, hidden))),
          ln2(register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({hidden})))),
          out(register_module("out", torch::nn::Linear(hidden, 1))),
          sigmoid_(sigmoid) {}
    torch::Tensor forward(torch::Tensor x) {
        x = torch::relu(ln1(fc1(x)));
        x = torch::relu(ln2(fc2(x)));
        x = out(x);
        return sigmoid_ ? torch::sigmoid(x) : x;
    }
    torch::nn::Linear fc1;
    torch::nn::LayerNorm ln1;
    torch::nn::Linear fc2;
    torch::nn::LayerNorm ln2;
    torch::nn::Linear out;
    bool sigmoid_;
};
TORCH_MODULE(Mlp);

void copy_params(torch::nn::Module& to, const torch::nn::Module& from, double tau) {
    torch::NoGradGuard no_grad;
    auto dst = to.parameters();
    auto src = from.parameters();
    for (size_t i = 0; i < dst.size(); ++i) {
        dst[i].mul_(1 - tau).add_(src[i], tau);
    }
}

torch::Tensor rows(const std::vector<std::vector<double>>& v) {
    const auto n = static_cast<int64_t>(v.size());
    const auto d = static_cast<int64_t>(v.front().size());
    torch::Tensor t = torch::empty({n, d}, torch::kFloat);
    auto a = t.accessor<float, 2>();
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < d; ++j) {
            a[i][j] = static_cast<float>(v[static_cast<size_t>(i)][static_cast<size_t>(j)]);
        }
    }
    return t;
}

}  // namespace

struct DdpgAgent::Nets {
    Mlp actor, critic, actor_target, critic_target;
    torch::optim::Adam actor_opt, critic_opt;
    Nets(int64_t state_dim, const DdpgOptions& o)
        : actor(state_dim, o.hidden, true),
          critic(state_dim + 1, o.hidden, false),
          actor_target(state_dim, o.hidden, true),
          critic_target(state_dim + 1, o.hidden, false),
          actor_opt(actor->parameters(), torch::optim::AdamOptions(o.actor_lr)),
          critic_opt(critic->parameters(), torch::optim::AdamOptions(o.critic_lr)) {
        copy_params(*actor_target, *actor, 1.0);
        copy_params(*critic_target, *critic, 1.0);
    }
};

DdpgAgent::DdpgAgent(int64_t state_dim, DdpgOptions options)
    : options_(options), state_dim_(state_dim), sigma_(options.noise), rng_(options.seed) {
    PF_CHECK(state_dim >= 1, Error, "DDPG needs a state of at least one feature");
    // Seeded initialisation without disturbing the process's generator (later training stages
    // draw from it and must not depend on whether a search ran).
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    at::Tensor saved;
    {
        std::lock_guard<std::mutex> lock(gen.mutex());
        saved = gen.get_state();
    }
    torch::manual_seed(options.seed);
    nets_ = std::make_unique<Nets>(state_dim, options_);
    {
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(saved);
    }
}

DdpgAgent::~DdpgAgent() = default;

double DdpgAgent::policy(const std::vector<double>& state) const {
    PF_CHECK(static_cast<int64_t>(state.size()) == state_dim_, Error,
             "DDPG state has {} features, expected {}", state.size(), state_dim_);
    torch::NoGradGuard no_grad;
    return nets_->actor->forward(rows({state})).item<double>();
}

double DdpgAgent::act(const std::vector<double>& state) {
    if (episodes_ < options_.warmup) {
        return std::uniform_real_distribution<double>(0, 1)(rng_);
    }
    const double mean = policy(state);
    // Truncated normal on [0, 1] around the policy's action (resampled; clipped after 100 tries).
    std::normal_distribution<double> noise(mean, std::max(sigma_, 1e-6));
    for (int i = 0; i < 100; ++i) {
        const double a = noise(rng_);
        if (a >= 0 && a <= 1) {
            return a;
        }
    }
    return std::clamp(mean, 0.0, 1.0);
}

void DdpgAgent::end_episode(const std::vector<std::vector<double>>& states,
                            const std::vector<double>& actions,
                            double reward) {
    PF_CHECK(!states.empty() && states.size() == actions.size(), Error,
             "an episode needs one action per state ({} states, {} actions)", states.size(),
             actions.size());
    if (!has_baseline_) {
        baseline_ = reward;
        has_baseline_ = true;
    } else {
        baseline_ = options_.baseline_decay * baseline_ + (1 - options_.baseline_decay) * reward;
    }
    const double centred = reward - baseline_;
    for (size_t t = 0; t < states.size(); ++t) {
        Transition tr;
        tr.state = states[t];
        tr.action = actions[t];
        tr.reward = centred;
        tr.done = t + 1 == states.size();
        tr.next_state = tr.done ? states[t] : states[t + 1];
        replay_.push_back(std::move(tr));
        if (static_cast<int64_t>(replay_.size()) > options_.buffer) {
            replay_.pop_front();
        }
    }
    ++episodes_;
    if (episodes_ > options_.warmup) {
        for (size_t t = 0; t < states.size(); ++t) {
            for (int64_t u = 0; u < options_.updates_per_step; ++u) {
                learn();
            }
        }
        sigma_ *= options_.noise_decay;
    }
}

void DdpgAgent::learn() {
    const auto n = static_cast<int64_t>(replay_.size());
    const int64_t b = std::min(options_.batch, n);
    std::uniform_int_distribution<int64_t> pick(0, n - 1);
    std::vector<std::vector<double>> s, s2;
    std::vector<float> a, r, done;
    for (int64_t i = 0; i < b; ++i) {
        const Transition& tr = replay_[static_cast<size_t>(pick(rng_))];
        s.push_back(tr.state);
        s2.push_back(tr.next_state);
        a.push_back(static_cast<float>(tr.action));
        r.push_back(static_cast<float>(tr.reward));
        done.push_back(tr.done ? 1.0f : 0.0f);
    }
    torch::Tensor st = rows(s), st2 = rows(s2);
    torch::Tensor at = torch::tensor(a).reshape({b, 1});
    torch::Tensor rt = torch::tensor(r).reshape({b, 1});
    torch::Tensor dt = torch::tensor(done).reshape({b, 1});
    Nets& m = *nets_;
    torch::Tensor target;
    {
        torch::NoGradGuard no_grad;
        torch::Tensor q2 =
            m.critic_target->forward(torch::cat({st2, m.actor_target->forward(st2)}, 1));
        target = rt + options_.discount * (1 - dt) * q2;
    }
    torch::Tensor q = m.critic->forward(torch::cat({st, at}, 1));
    torch::Tensor critic_loss = torch::mse_loss(q, target);
    m.critic_opt.zero_grad();
    critic_loss.backward();
    m.critic_opt.step();
    torch::Tensor actor_loss = -m.critic->forward(torch::cat({st, m.actor->forward(st)}, 1)).mean();
    m.actor_opt.zero_grad();
    actor_loss.backward();
    m.actor_opt.step();
    copy_params(*m.actor_target, *m.actor, options_.tau);
    copy_params(*m.critic_target, *m.critic, options_.tau);
}

}  // namespace pocketflow
