// SPDX-License-Identifier: Apache-2.0
// Channel-coupling analysis, channel surgery, data-free criteria and the LASSO channel selection.
#include "pocketflow/prune.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <fnmatch.h>

#include "pocketflow/error.h"

namespace pocketflow {

namespace {

/// Union-find over channel spaces, with a "blocked" reason per space.
struct Spaces {
    std::vector<int> parent;
    std::vector<std::string> blocked;

    int add(const std::string& reason = "") {
        parent.push_back(static_cast<int>(parent.size()));
        blocked.push_back(reason);
        return parent.back();
    }
    int find(int s) {
        while (parent[static_cast<size_t>(s)] != s) {
            parent[static_cast<size_t>(s)] =
                parent[static_cast<size_t>(parent[static_cast<size_t>(s)])];
            s = parent[static_cast<size_t>(s)];
        }
        return s;
    }
    int unite(int a, int b) {
        a = find(a);
        b = find(b);
        if (a != b) {
            parent[static_cast<size_t>(std::max(a, b))] = std::min(a, b);
        }
        return std::min(a, b);
    }
    void block(int s, const std::string& reason) {
        if (blocked[static_cast<size_t>(s)].empty()) {
            blocked[static_cast<size_t>(s)] = reason;
        }
    }
};

at::Tensor index_tensor(const std::vector<int64_t>& keep) {
    return at::tensor(keep, at::kLong);
}

/// Columns of a linear consumer that belong to the kept channels (f features per channel).
std::vector<int64_t> expand_columns(const std::vector<int64_t>& keep, int64_t f) {
    std::vector<int64_t> cols;
    cols.reserve(keep.size() * static_cast<size_t>(f));
    for (int64_t c : keep) {
        for (int64_t j = 0; j < f; ++j) {
            cols.push_back(c * f + j);
        }
    }
    return cols;
}

at::Tensor select(const at::Tensor& t, int64_t dim, const at::Tensor& idx) {
    return t.detach().index_select(dim, idx).contiguous();
}

}  // namespace

std::vector<ChannelGroup> channel_groups(const Graph& graph,
                                         const std::vector<std::string>& exclude) {
    const auto& nodes = graph.nodes();
    auto shapes = graph.infer_shapes();
    Spaces spaces;
    std::vector<int> space(nodes.size(), -1);
    std::vector<int64_t> factor(nodes.size(), 1);  // features per channel of a flattened value
    struct Member {
        int node;
        int space;
        int64_t factor;
    };
    std::vector<Member> producers, depthwise, bns, consumers;
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node& n = nodes[i];
        int in = n.inputs.empty() ? -1 : space[static_cast<size_t>(n.inputs[0])];
        int64_t in_factor = n.inputs.empty() ? 1 : factor[static_cast<size_t>(n.inputs[0])];
        switch (n.op) {
            case Op::kInput:
                space[i] = spaces.add("the model input");
                break;
            case Op::kConv2d: {
                const at::Tensor& w = n.params.at("weight");
                int64_t c_in = w.size(1) * n.attrs.groups;
                if (n.attrs.groups == 1) {
                    space[i] = spaces.add();
                    producers.push_back({static_cast<int>(i), space[i], 1});
                    consumers.push_back({static_cast<int>(i), in, in_factor});
                } else if (n.attrs.groups == c_in && w.size(0) == c_in) {
                    space[i] = in;
                    depthwise.push_back({static_cast<int>(i), in, 1});
                } else {
                    spaces.block(in, "grouped conv " + n.name);
                    space[i] = spaces.add("grouped conv " + n.name);
                }
                break;
            }
            case Op::kLinear:
                space[i] = spaces.add();
                producers.push_back({static_cast<int>(i), space[i], 1});
                consumers.push_back({static_cast<int>(i), in, in_factor});
                break;
            case Op::kBatchNorm2d:
                space[i] = in;
                bns.push_back({static_cast<int>(i), in, 1});
                break;
            case Op::kFlatten: {
                space[i] = in;
                const auto& s = shapes[static_cast<size_t>(n.inputs[0])];
                int64_t spatial = 1;
                for (size_t d = 1; d < s.size(); ++d) {
                    spatial *= s[d];
                }
                factor[i] = in_factor * spatial;
                if (n.attrs.axis != 1) {
                    spaces.block(in, "flatten " + n.name);
                }
                break;
            }
            case Op::kAdd:
            case Op::kMul: {
                int a = space[static_cast<size_t>(n.inputs[0])],
                    b = space[static_cast<size_t>(n.inputs[1])];
                const auto& sa = shapes[static_cast<size_t>(n.inputs[0])];
                const auto& sb = shapes[static_cast<size_t>(n.inputs[1])];
                if (sa.size() == sb.size() && sa[0] == sb[0] &&
                    factor[static_cast<size_t>(n.inputs[0])] ==
                        factor[static_cast<size_t>(n.inputs[1])]) {
                    space[i] = spaces.unite(a, b);
                    factor[i] = in_factor;
                } else {
                    spaces.block(a, "broadcast " + n.name);
                    spaces.block(b, "broadcast " + n.name);
                    space[i] = spaces.add("broadcast " + n.name);
                }
                break;
            }
            case Op::kConcat:
                for (int k : n.inputs) {
                    spaces.block(space[static_cast<size_t>(k)], "concat " + n.name);
                }
                space[i] = spaces.add("concat " + n.name);
                break;
            case Op::kReshape:
                spaces.block(in, "reshape " + n.name);
                space[i] = spaces.add("reshape " + n.name);
                break;
            default:  // element-wise and pooling ops keep the channels
                space[i] = in;
                factor[i] = in_factor;
                break;
        }
    }
    spaces.block(space[static_cast<size_t>(graph.output())], "the model output");
    // Collect members per root space.
    std::map<int, ChannelGroup> by_root;
    for (size_t s = 0; s < spaces.parent.size(); ++s) {
        int root = spaces.find(static_cast<int>(s));
        auto& g = by_root[root];
        if (!spaces.blocked[s].empty() && g.prunable) {
            g.prunable = false;
            g.reason = spaces.blocked[s];
        }
    }
    for (const auto& m : producers) {
        by_root[spaces.find(m.space)].producers.push_back(m.node);
    }
    for (const auto& m : depthwise) {
        by_root[spaces.find(m.space)].depthwise.push_back(m.node);
    }
    for (const auto& m : bns) {
        by_root[spaces.find(m.space)].batchnorms.push_back(m.node);
    }
    for (const auto& m : consumers) {
        auto& g = by_root[spaces.find(m.space)];
        g.consumers.push_back(m.node);
        g.consumer_spatial.push_back(m.factor);
    }
    std::vector<ChannelGroup> groups;
    for (auto& [root, g] : by_root) {
        if (g.producers.empty()) {
            continue;
        }
        std::sort(g.producers.begin(), g.producers.end());
        const Node& first = nodes[static_cast<size_t>(g.producers[0])];
        g.name = first.name;
        g.channels = first.params.at("weight").size(0);
        for (int p : g.producers) {
            for (const auto& pattern : exclude) {
                if (::fnmatch(pattern.c_str(), nodes[static_cast<size_t>(p)].name.c_str(), 0) ==
                        0 &&
                    g.prunable) {
                    g.prunable = false;
                    g.reason = "excluded by '" + pattern + "'";
                }
            }
        }
        if (g.prunable && g.consumers.empty()) {
            g.prunable = false;
            g.reason = "no consumer";
        }
        groups.push_back(std::move(g));
    }
    std::sort(groups.begin(), groups.end(), [](const ChannelGroup& a, const ChannelGroup& b) {
        return a.producers[0] < b.producers[0];
    });
    return groups;
}

void prune_group(Graph& graph, const ChannelGroup& group, const std::vector<int64_t>& keep) {
    PF_CHECK(
        !keep.empty() && std::is_sorted(keep.begin(), keep.end()) && keep.back() < group.channels,
        Error, "failed to prune group {}: keep must be sorted channel indices below {}", group.name,
        group.channels);
    auto& nodes = graph.nodes();
    at::Tensor idx = index_tensor(keep);
    const auto k = static_cast<int64_t>(keep.size());
    // A weight's mask and codebook indices follow its rows and columns (sparsity.h).
    auto select_weight = [&](Node& n, int64_t dim, const at::Tensor& which) {
        n.params["weight"] = select(n.params.at("weight"), dim, which);
        for (const char* key : {"weight_mask", "weight_index"}) {
            auto it = n.buffers.find(key);
            if (it != n.buffers.end()) {
                it->second = it->second.index_select(dim, which).contiguous();
            }
        }
    };
    auto rows = [&](Node& n) {
        select_weight(n, 0, idx);
        if (n.params.count("bias")) {
            n.params["bias"] = select(n.params.at("bias"), 0, idx);
        }
        n.attrs.out_channels = k;
    };
    for (int p : group.producers) {
        rows(nodes[static_cast<size_t>(p)]);
    }
    for (int d : group.depthwise) {
        rows(nodes[static_cast<size_t>(d)]);
        nodes[static_cast<size_t>(d)].attrs.groups = k;
    }
    for (int b : group.batchnorms) {
        Node& n = nodes[static_cast<size_t>(b)];
        for (auto* tensors : {&n.params, &n.buffers}) {
            for (auto& [key, t] : *tensors) {
                t = select(t, 0, idx);
            }
        }
    }
    for (size_t c = 0; c < group.consumers.size(); ++c) {
        Node& n = nodes[static_cast<size_t>(group.consumers[c])];
        at::Tensor cols = n.op == Op::kLinear
                              ? index_tensor(expand_columns(keep, group.consumer_spatial[c]))
                              : idx;
        select_weight(n, 1, cols);
    }
}

void zero_group(Graph& graph, const ChannelGroup& group, const std::vector<int64_t>& keep) {
    auto& nodes = graph.nodes();
    at::Tensor mask = at::zeros({group.channels});
    mask.index_fill_(0, index_tensor(keep), 1.0);
    at::NoGradGuard no_grad;
    auto zero_rows = [&](Node& n) {
        at::Tensor& w = n.params.at("weight");
        std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
        shape[0] = -1;
        w.mul_(mask.view(shape));
        if (n.params.count("bias")) {
            n.params.at("bias").mul_(mask);
        }
    };
    for (int p : group.producers) {
        zero_rows(nodes[static_cast<size_t>(p)]);
    }
    for (int d : group.depthwise) {
        zero_rows(nodes[static_cast<size_t>(d)]);
    }
    for (int b : group.batchnorms) {
        Node& n = nodes[static_cast<size_t>(b)];
        n.params.at("weight").mul_(mask);
        n.params.at("bias").mul_(mask);
    }
}

at::Tensor channel_scores(const Graph& graph,
                          const ChannelGroup& group,
                          const std::string& criterion) {
    const auto& nodes = graph.nodes();
    at::Tensor total = at::zeros({group.channels}, at::kDouble);
    auto add = [&](at::Tensor s) {
        s = s.to(at::kDouble);
        double mean = s.mean().item<double>();
        total += mean > 0 ? s / mean : s;  // each member on the same scale
    };
    if (criterion == "bn_scale") {
        PF_CHECK(!group.batchnorms.empty(), ConfigError,
                 "criterion bn_scale needs a BatchNorm after {}, which has none; use l1, l2, fpgm "
                 "or lasso",
                 group.name);
        for (int b : group.batchnorms) {
            add(nodes[static_cast<size_t>(b)].params.at("weight").detach().abs());
        }
        return total;
    }
    std::vector<int> members = group.producers;
    members.insert(members.end(), group.depthwise.begin(), group.depthwise.end());
    for (int m : members) {
        at::Tensor w = nodes[static_cast<size_t>(m)].params.at("weight").detach().reshape(
            {group.channels, -1});
        if (criterion == "l1") {
            add(w.abs().sum(1));
        } else if (criterion == "l2") {
            add(w.pow(2).sum(1).sqrt());
        } else if (criterion == "fpgm") {
            // Filters near the geometric median are redundant: score = summed distance to the
            // others.
            add(at::cdist(w.unsqueeze(0), w.unsqueeze(0)).squeeze(0).sum(1));
        } else {
            throw ConfigError(fmt::format("unknown pruning criterion '{}'", criterion));
        }
    }
    return total;
}

std::vector<int64_t> top_channels(const at::Tensor& scores, int64_t count) {
    at::Tensor idx = std::get<1>(scores.topk(count));
    std::vector<int64_t> keep(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
    std::sort(keep.begin(), keep.end());
    return keep;
}

namespace {
/// Non-negative LASSO by cyclic coordinate descent on the normal equations.
std::vector<double> lasso_cd(const std::vector<double>& g,
                             const std::vector<double>& b,
                             size_t n,
                             double lambda,
                             std::vector<double> beta) {
    for (int sweep = 0; sweep < 500; ++sweep) {
        double change = 0, scale = 0;
        for (size_t i = 0; i < n; ++i) {
            double gii = g[i * n + i];
            if (gii <= 0) {
                beta[i] = 0;
                continue;
            }
            double r = b[i];
            for (size_t j = 0; j < n; ++j) {
                r -= g[i * n + j] * beta[j];
            }
            r += gii * beta[i];
            double next = std::max(0.0, r - lambda / 2) / gii;
            change = std::max(change, std::abs(next - beta[i]));
            scale = std::max(scale, std::abs(next));
            beta[i] = next;
        }
        if (change <= 1e-7 * std::max(scale, 1e-12)) {
            break;
        }
    }
    return beta;
}

int64_t nonzeros(const std::vector<double>& beta) {
    return std::count_if(beta.begin(), beta.end(), [](double v) { return v > 0; });
}
}  // namespace

std::vector<int64_t> lasso_select(const at::Tensor& gram,
                                  const at::Tensor& target,
                                  int64_t count,
                                  at::Tensor* beta_out) {
    const auto n = static_cast<size_t>(target.numel());
    PF_CHECK(count >= 1 && count <= static_cast<int64_t>(n), Error,
             "lasso: cannot keep {} of {} channels", count, n);
    at::Tensor gd = gram.to(at::kDouble).contiguous(), bd = target.to(at::kDouble).contiguous();
    std::vector<double> g(gd.data_ptr<double>(), gd.data_ptr<double>() + n * n);
    std::vector<double> b(bd.data_ptr<double>(), bd.data_ptr<double>() + n);
    std::vector<double> beta(n, 0.0);
    double lambda_max = 0;
    for (double v : b) {
        lambda_max = std::max(lambda_max, 2 * v);
    }
    std::vector<double> best;
    if (static_cast<int64_t>(n) == count || lambda_max <= 0) {
        best = lasso_cd(g, b, n, 0.0, beta);
    } else {
        // Double λ from a small value until at most `count` channels survive, then bisect.
        double lo = 0, hi = lambda_max * 1e-4;
        std::vector<double> at_lo = lasso_cd(g, b, n, 0.0, beta);
        std::vector<double> at_hi = lasso_cd(g, b, n, hi, at_lo);
        while (nonzeros(at_hi) > count && hi < lambda_max) {
            lo = hi;
            at_lo = at_hi;
            hi *= 2;
            at_hi = lasso_cd(g, b, n, hi, at_hi);
        }
        for (int it = 0; it < 60 && nonzeros(at_hi) != count && nonzeros(at_lo) != count; ++it) {
            double mid = 0.5 * (lo + hi);
            std::vector<double> at_mid = lasso_cd(g, b, n, mid, at_lo);
            if (nonzeros(at_mid) > count) {
                lo = mid;
                at_lo = at_mid;
            } else {
                hi = mid;
                at_hi = at_mid;
            }
        }
        // Exactly `count` non-zero when the search hit it; otherwise (ties) the largest
        // coefficients of the solution that still has at least `count`.
        best = nonzeros(at_hi) == count ? at_hi : at_lo;
    }
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t c) {
        return best[static_cast<size_t>(a)] > best[static_cast<size_t>(c)];
    });
    order.resize(static_cast<size_t>(count));
    std::sort(order.begin(), order.end());
    if (beta_out != nullptr) {
        *beta_out = at::tensor(best, at::kDouble);
    }
    return order;
}

int64_t kept_channels(int64_t channels, double ratio, int64_t multiple) {
    int64_t k =
        std::clamp<int64_t>(std::llround(ratio * static_cast<double>(channels)), 1, channels);
    if (multiple > 1 && k != channels) {
        // The nearest of whole blocks or the whole group (ties keep more): a group of at most
        // `multiple` channels stays whole.
        int64_t lower = std::max(multiple, k / multiple * multiple);
        int64_t upper = std::min(channels, lower + multiple);
        k = lower > channels || k - lower >= upper - k ? upper : lower;
    }
    return k;
}

PrunedMacs::PrunedMacs(const Graph& graph, const std::vector<ChannelGroup>& groups) {
    const auto& nodes = graph.nodes();
    std::vector<int> out_group(nodes.size(), -1), in_group(nodes.size(), -1);
    std::vector<int64_t> in_factor(nodes.size(), 1);
    for (const auto& g : groups) {
        if (!g.prunable) {
            continue;
        }
        const int r = static_cast<int>(channels_.size());
        channels_.push_back(g.channels);
        for (int p : g.producers) {
            out_group[static_cast<size_t>(p)] = r;
        }
        for (int d : g.depthwise) {  // one input per group: only the output count changes
            out_group[static_cast<size_t>(d)] = r;
        }
        for (size_t k = 0; k < g.consumers.size(); ++k) {
            in_group[static_cast<size_t>(g.consumers[k])] = r;
            in_factor[static_cast<size_t>(g.consumers[k])] = g.consumer_spatial[k];
        }
    }
    const auto stats = graph.layer_stats();
    for (size_t i = 0; i < nodes.size(); ++i) {
        const Node& n = nodes[i];
        if (n.op != Op::kConv2d && n.op != Op::kLinear) {
            continue;
        }
        total_ += stats[i].macs;
        const at::Tensor& w = n.params.at("weight");
        Layer l;
        l.out = w.size(0);
        l.in = w.size(1);  // conv: input channels per group; linear: input features
        l.unit = stats[i].macs / (l.out * l.in);
        l.out_group = out_group[i];
        l.in_group = in_group[i];
        l.in_factor = in_factor[i];
        layers_.push_back(l);
    }
}

int64_t PrunedMacs::at(const std::vector<int64_t>& kept) const {
    PF_CHECK(kept.size() == channels_.size(), Error,
             "failed to count MACs: {} kept counts for {} prunable groups", kept.size(),
             channels_.size());
    int64_t total = 0;
    for (const Layer& l : layers_) {
        int64_t out = l.out_group < 0 ? l.out : kept[static_cast<size_t>(l.out_group)];
        int64_t in = l.in_group < 0 ? l.in : kept[static_cast<size_t>(l.in_group)] * l.in_factor;
        total += l.unit * out * in;
    }
    return total;
}

int64_t PrunedMacs::at_ratios(const std::vector<double>& ratios, int64_t multiple) const {
    std::vector<int64_t> kept;
    for (size_t r = 0; r < channels_.size(); ++r) {
        kept.push_back(kept_channels(channels_[r], ratios.at(r), multiple));
    }
    return at(kept);
}

int64_t macs_with_ratios(const Graph& graph,
                         const std::vector<ChannelGroup>& groups,
                         const std::vector<double>& ratios,
                         int64_t multiple) {
    return PrunedMacs(graph, groups).at_ratios(ratios, multiple);
}

RatioFit ratios_for_target(const Graph& graph,
                           const std::vector<ChannelGroup>& groups,
                           double target,
                           int64_t multiple) {
    std::vector<int64_t> channels;
    for (const auto& g : groups) {
        if (g.prunable) {
            channels.push_back(g.channels);
        }
    }
    const PrunedMacs macs(graph, groups);
    const double total = static_cast<double>(macs.total());
    auto fraction = [&](const std::vector<double>& ratios) {
        return static_cast<double>(macs.at_ratios(ratios, multiple)) / total;
    };
    // One ratio for all groups, by bisection; the larger bound keeps at least the target.
    RatioFit fit;
    double lo = 0.0, hi = 1.0;
    for (int it = 0; it < 40; ++it) {
        double mid = 0.5 * (lo + hi);
        (fraction(std::vector<double>(channels.size(), mid)) > target ? hi : lo) = mid;
    }
    fit.uniform = hi;
    // Then, since blocks of channels make the uniform ratio coarse, one block at a time from the
    // group keeping the largest fraction of its channels (ties: the smallest MACs step) until the
    // target is reached; the closer of the last two allocations wins.
    std::vector<int64_t> kept;
    for (int64_t c : channels) {
        kept.push_back(kept_channels(c, hi, multiple));
    }
    const std::vector<int64_t> start = kept;
    auto ratios_of = [&](const std::vector<int64_t>& k) {
        std::vector<double> r;
        for (size_t i = 0; i < k.size(); ++i) {
            r.push_back(static_cast<double>(k[i]) / static_cast<double>(channels[i]));
        }
        return r;
    };
    auto step_down = [&](int64_t k) {  // the next smaller allowed count, or k when there is none
        int64_t next = k % multiple != 0 ? k / multiple * multiple : k - multiple;
        return next >= multiple ? next : k;
    };
    double current = fraction(ratios_of(kept));
    while (current > target) {
        double largest = -1;
        for (size_t i = 0; i < kept.size(); ++i) {
            if (step_down(kept[i]) != kept[i]) {
                largest = std::max(largest,
                                   static_cast<double>(kept[i]) / static_cast<double>(channels[i]));
            }
        }
        if (largest < 0) {
            break;  // every group is at its smallest allowed size
        }
        std::vector<int64_t> best;
        double best_after = -1;
        for (size_t i = 0; i < kept.size(); ++i) {
            const double f = static_cast<double>(kept[i]) / static_cast<double>(channels[i]);
            if (step_down(kept[i]) == kept[i] || f < largest - 1e-9) {
                continue;
            }
            std::vector<int64_t> trial = kept;
            trial[i] = step_down(kept[i]);
            double after = fraction(ratios_of(trial));
            if (after > best_after) {
                best_after = after;
                best = std::move(trial);
            }
        }
        if (best_after < target && target - best_after > current - target) {
            break;  // one more block would undershoot by more than we overshoot now
        }
        kept = std::move(best);
        current = best_after;
    }
    fit.ratios = ratios_of(kept);
    for (size_t i = 0; i < kept.size(); ++i) {
        fit.refined += kept[i] != start[i];
    }
    fit.kept_fraction = current;
    return fit;
}

}  // namespace pocketflow
