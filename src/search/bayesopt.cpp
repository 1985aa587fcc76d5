// SPDX-License-Identifier: Apache-2.0
// Gaussian-process Bayesian optimisation: Matérn-5/2 GP, marginal-likelihood hyper-parameters,
// expected improvement.
#include "pocketflow/bayesopt.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "pocketflow/error.h"

namespace pocketflow {

namespace {

constexpr double kPi = 3.14159265358979323846;

/// Hyper-parameters from one vector of logs: signal, lengths..., noise.
GpHyper from_logs(const std::vector<double>& v) {
    GpHyper h;
    h.signal = std::exp(v.front());
    for (size_t i = 1; i + 1 < v.size(); ++i) {
        h.length.push_back(std::exp(v[i]));
    }
    h.noise = std::exp(v.back());
    return h;
}

/// Box of the log hyper-parameters (targets are standardised, inputs in [0, 1]).
double log_lo(size_t i, size_t n) {
    return i == 0 ? std::log(0.1) : (i + 1 == n ? std::log(1e-3) : std::log(0.03));
}
double log_hi(size_t i, size_t n) {
    return i == 0 ? std::log(10.0) : (i + 1 == n ? std::log(1.0) : std::log(10.0));
}

}  // namespace

double matern52(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const GpHyper& hyper) {
    double r2 = 0;
    for (Eigen::Index i = 0; i < a.size(); ++i) {
        const double d = (a[i] - b[i]) / hyper.length[static_cast<size_t>(i)];
        r2 += d * d;
    }
    const double s5r = std::sqrt(5.0 * r2);
    return hyper.signal * hyper.signal * (1 + s5r + 5.0 * r2 / 3.0) * std::exp(-s5r);
}

namespace {

/// K(x, x) + noise² I.
Eigen::MatrixXd covariance(const Eigen::MatrixXd& x, const GpHyper& hyper) {
    const Eigen::Index n = x.rows();
    Eigen::MatrixXd k(n, n);
    for (Eigen::Index i = 0; i < n; ++i) {
        for (Eigen::Index j = 0; j <= i; ++j) {
            k(i, j) = k(j, i) = matern52(x.row(i).transpose(), x.row(j).transpose(), hyper);
        }
        k(i, i) += hyper.noise * hyper.noise;
    }
    return k;
}

}  // namespace

double expected_improvement(double mean, double sd, double best, double xi) {
    const double gain = mean - best - xi;
    if (sd <= 1e-12) {
        return std::max(0.0, gain);
    }
    const double z = gain / sd;
    const double cdf = 0.5 * std::erfc(-z / std::sqrt(2.0));
    const double pdf = std::exp(-0.5 * z * z) / std::sqrt(2 * kPi);
    return gain * cdf + sd * pdf;
}

void GaussianProcess::set_data(const Eigen::MatrixXd& x, const Eigen::VectorXd& y) {
    PF_CHECK(x.rows() == y.size() && x.rows() > 0, Error, "a GP needs as many targets as inputs");
    x_ = x;
    y_mean_ = y.mean();
    const double var = (y.array() - y_mean_).square().mean();
    y_scale_ = var > 1e-24 ? std::sqrt(var) : 1.0;
    y_ = (y.array() - y_mean_) / y_scale_;
}

double GaussianProcess::log_marginal_likelihood(const GpHyper& hyper) const {
    const Eigen::Index n = x_.rows();
    Eigen::LLT<Eigen::MatrixXd> llt(covariance(x_, hyper));
    if (llt.info() != Eigen::Success) {
        return -1e300;
    }
    const Eigen::VectorXd alpha = llt.solve(y_);
    const Eigen::MatrixXd l = llt.matrixL();
    return -0.5 * y_.dot(alpha) - l.diagonal().array().log().sum() -
           0.5 * static_cast<double>(n) * std::log(2 * kPi);
}

void GaussianProcess::factorise() {
    Eigen::LLT<Eigen::MatrixXd> llt(covariance(x_, hyper_));
    PF_CHECK(llt.info() == Eigen::Success, Error,
             "GP covariance is not positive definite (noise {})", hyper_.noise);
    chol_ = llt.matrixL();
    alpha_ = llt.solve(y_);
}

void GaussianProcess::fit(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, const GpHyper& h) {
    set_data(x, y);
    PF_CHECK(static_cast<Eigen::Index>(h.length.size()) == x.cols(), Error,
             "{} length-scales for {} dimensions", h.length.size(), x.cols());
    hyper_ = h;
    factorise();
}

void GaussianProcess::fit(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, uint64_t seed) {
    set_data(x, y);
    const size_t n = static_cast<size_t>(x.cols()) + 2;
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    // Multi-start random search over the box of log hyper-parameters...
    std::vector<std::pair<double, std::vector<double>>> starts;
    for (int s = 0; s < 128; ++s) {
        std::vector<double> v(n);
        for (size_t i = 0; i < n; ++i) {
            v[i] = log_lo(i, n) + unit(rng) * (log_hi(i, n) - log_lo(i, n));
        }
        starts.emplace_back(log_marginal_likelihood(from_logs(v)), v);
    }
    std::sort(starts.begin(), starts.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    // ...then coordinate refinement (pattern search with halving steps) from the best three.
    double best = -1e300;
    std::vector<double> best_v;
    for (size_t s = 0; s < std::min<size_t>(3, starts.size()); ++s) {
        auto [value, v] = starts[s];
        for (double step = 1.0; step > 0.01; step *= 0.5) {
            bool moved = true;
            while (moved) {
                moved = false;
                for (size_t i = 0; i < n; ++i) {
                    for (double dir : {-1.0, 1.0}) {
                        std::vector<double> w = v;
                        w[i] = std::clamp(w[i] + dir * step, log_lo(i, n), log_hi(i, n));
                        const double lw = log_marginal_likelihood(from_logs(w));
                        if (lw > value + 1e-9) {
                            value = lw;
                            v = std::move(w);
                            moved = true;
                        }
                    }
                }
            }
        }
        if (value > best) {
            best = value;
            best_v = v;
        }
    }
    hyper_ = from_logs(best_v);
    factorise();
}

std::pair<double, double> GaussianProcess::predict(const Eigen::VectorXd& point) const {
    const Eigen::Index n = x_.rows();
    Eigen::VectorXd k(n);
    for (Eigen::Index i = 0; i < n; ++i) {
        k[i] = matern52(x_.row(i).transpose(), point, hyper_);
    }
    const double mean = k.dot(alpha_);
    const Eigen::VectorXd v = chol_.triangularView<Eigen::Lower>().solve(k);
    const double var = std::max(hyper_.signal * hyper_.signal - v.squaredNorm(), 0.0);
    return {y_mean_ + y_scale_ * mean, y_scale_ * std::sqrt(var)};
}

Eigen::VectorXd propose_next(const Eigen::MatrixXd& x,
                             const Eigen::VectorXd& y,
                             uint64_t seed,
                             const std::function<Eigen::VectorXd(const Eigen::VectorXd&)>& round) {
    const Eigen::Index d = x.cols();
    GaussianProcess gp;
    gp.fit(x, y, seed);
    const double best = y.maxCoeff();
    std::mt19937_64 rng(seed + 1);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    auto place = [&](Eigen::VectorXd p) {
        p = p.cwiseMax(0.0).cwiseMin(1.0);
        return round ? round(p) : p;
    };
    auto ei = [&](const Eigen::VectorXd& p) {
        auto [mean, sd] = gp.predict(p);
        return expected_improvement(mean, sd, best, 0.01 * std::max(1e-12, std::abs(best)));
    };
    // Random search...
    std::vector<std::pair<double, Eigen::VectorXd>> pool;
    const int samples = 500 * static_cast<int>(d);
    for (int s = 0; s < samples; ++s) {
        Eigen::VectorXd p(d);
        for (Eigen::Index i = 0; i < d; ++i) {
            p[i] = unit(rng);
        }
        p = place(p);
        pool.emplace_back(ei(p), p);
    }
    std::sort(pool.begin(), pool.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    // ...then local refinement: Gaussian steps around the best five, shrinking.
    std::normal_distribution<double> normal(0.0, 1.0);
    auto winner = pool.front();
    for (size_t k = 0; k < std::min<size_t>(5, pool.size()); ++k) {
        auto current = pool[k];
        for (double step = 0.1; step > 0.002; step *= 0.7) {
            for (int t = 0; t < 10; ++t) {
                Eigen::VectorXd p = current.second;
                for (Eigen::Index i = 0; i < d; ++i) {
                    p[i] += step * normal(rng);
                }
                p = place(p);
                const double e = ei(p);
                if (e > current.first) {
                    current = {e, p};
                }
            }
        }
        if (current.first > winner.first) {
            winner = current;
        }
    }
    return winner.second;
}

}  // namespace pocketflow
