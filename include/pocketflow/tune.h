// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace pocketflow {

/// One tuned job key: a number in [lo, hi], on a log scale or as an integer if asked.
struct TuneParam {
    std::string key;  ///< a job key path, as for --set (e.g. train.optimizer.lr)
    double lo = 0, hi = 1;
    bool log = false;
    bool integer = false;
};

/// The search space file of `pocketflow tune` (space.yaml).
///
/// Example:
///   objective: val_top1          # a number in each trial's summary.json
///   direction: maximize          # or minimize
///   trials: 12                   # in all, the random ones included
///   initial: 4                   # random trials before the Gaussian process proposes
///   params:
///     train.optimizer.lr: {min: 0.001, max: 0.1, log: true}
///     pipeline.0.finetune_epochs: {min: 1, max: 4, integer: true}
struct TuneSpace {
    std::string file;
    std::string objective = "val_top1";
    bool maximize = true;
    int64_t trials = 12;
    int64_t initial = 4;
    uint64_t seed = 0;
    std::vector<TuneParam> params;
};

/// Reads and checks a space file (ConfigError naming the file, line and key on bad input).
TuneSpace load_tune_space(const std::string& path);

struct TuneOptions {
    std::string config;                  ///< the job file (empty: the built-in default job)
    std::vector<std::string> overrides;  ///< --set of every trial
    std::string out_dir;                 ///< default runs/<job name>-tune
    bool resume = false;                 ///< continue an interrupted tune in out_dir
};

/// Bayesian optimisation of job keys (ALGORITHMS.md): the first `initial` trials at seeded random
/// points, then each next point the maximiser of expected improvement under a Matérn-5/2 Gaussian
/// process fitted to the trials so far. Each trial is the job with the trial's values, run in
/// <out>/trial_<k>; the table <out>/trials.csv is rewritten after every trial, the best trial's
/// job is written as <out>/best_job.yaml, and the result as <out>/tune.json (returned).
/// --resume reuses the finished trials (the proposals depend only on them, so the tune goes on
/// as it would have) and resumes an interrupted trial from its checkpoints.
nlohmann::json run_tune(const TuneSpace& space, const TuneOptions& options);

}  // namespace pocketflow
