// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include <Eigen/Dense>

namespace pocketflow {

/// Hyper-parameters of a Matérn-5/2 kernel with one length-scale per input dimension (ARD):
/// k(x, x') = signal² · (1 + √5 r + 5r²/3) · exp(−√5 r), r² = Σ ((x_i − x'_i) / length_i)², plus
/// noise² on the diagonal of the training covariance.
struct GpHyper {
    double signal = 1.0;
    std::vector<double> length;  ///< per dimension
    double noise = 1e-2;
};

/// Gaussian-process regression (ALGORITHMS.md, "Bayesian optimisation"): inputs in [0, 1]^d,
/// targets standardised inside; hyper-parameters either given or fitted by maximising the log
/// marginal likelihood (seeded multi-start random search in log space, then coordinate
/// refinement). Cholesky with Eigen.
///
/// Example:
///   GaussianProcess gp;
///   gp.fit(x, y);                  // or gp.fit(x, y, hyper) with fixed hyper-parameters
///   auto [mean, sd] = gp.predict(point);
class GaussianProcess {
public:
    /// Fits with hyper-parameters chosen by marginal likelihood.
    void fit(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, uint64_t seed = 0);
    /// Fits with the given hyper-parameters (in the standardised target units).
    void fit(const Eigen::MatrixXd& x, const Eigen::VectorXd& y, const GpHyper& hyper);
    /// Posterior mean and standard deviation of the latent function at `point` (target units).
    std::pair<double, double> predict(const Eigen::VectorXd& point) const;
    /// Log marginal likelihood of the standardised targets under `hyper`.
    double log_marginal_likelihood(const GpHyper& hyper) const;
    const GpHyper& hyper() const { return hyper_; }

private:
    Eigen::MatrixXd x_;
    Eigen::VectorXd y_;  ///< standardised
    double y_mean_ = 0, y_scale_ = 1;
    GpHyper hyper_;
    Eigen::MatrixXd chol_;  ///< lower Cholesky factor of K + noise² I
    Eigen::VectorXd alpha_;

    void set_data(const Eigen::MatrixXd& x, const Eigen::VectorXd& y);
    void factorise();
};

/// The Matérn-5/2 kernel value between two points.
double matern52(const Eigen::VectorXd& a, const Eigen::VectorXd& b, const GpHyper& hyper);

/// Expected improvement over `best` of a maximised objective with posterior N(mean, sd²):
/// (mean − best − xi) Φ(z) + sd φ(z), z = (mean − best − xi) / sd.
double expected_improvement(double mean, double sd, double best, double xi = 0.0);

/// The next point to try in [0, 1]^d: the maximiser of expected improvement under a GP fitted to
/// the trials so far (x: one row per trial, y: the objective, maximised), found by random search
/// plus local refinement around the best candidates. `round` maps a point onto the values the
/// caller can try (integer parameters), so that EI is computed where trials will really run.
Eigen::VectorXd propose_next(
    const Eigen::MatrixXd& x,
    const Eigen::VectorXd& y,
    uint64_t seed,
    const std::function<Eigen::VectorXd(const Eigen::VectorXd&)>& round = {});

}  // namespace pocketflow
