// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace pocketflow {

/// A run of a sweep: its name (its directory under the sweep's), job file and overrides.
struct SweepRun {
    std::string name;
    std::string config;                  ///< the job (empty: the built-in default job)
    std::vector<std::string> overrides;  ///< "key=value", after the sweep's --set
};

/// `pocketflow sweep`: one job run under several sets of overrides (a grid and/or a list), each run
/// a `pocketflow compress` process of its own, N at a time with the cores divided between them.
struct SweepOptions {
    std::string config;                  ///< the job (empty: the built-in default job)
    std::vector<std::string> overrides;  ///< --set applied to every run
    /// Grid: each key with its values (YAML scalars or flow text); every combination is a run.
    std::vector<std::pair<std::string, std::vector<std::string>>> grid;
    /// Explicit runs, each a list of "key=value" overrides (added after the grid's).
    std::vector<std::vector<std::string>> runs;
    /// Named runs of jobs of their own (a benchmark suite: `jobs:` in a sweep file), after the
    /// others.
    std::vector<SweepRun> named;
    std::string out;  ///< sweep directory: a run directory per run, results.csv/json
    int jobs = 1;     ///< runs at a time (capped at the cores)
    int threads = 0;  ///< cores for the whole sweep (0: all), divided between the jobs
    /// After the runs: LibTorch inference latency of every finished model at this batch (0: none),
    /// all models timed in one interleaved loop on all the sweep's cores (`latency_ms`).
    int64_t latency_batch = 0;
    std::string executable;  ///< the pocketflow binary that runs each job
};

/// Reads a sweep file (`grid: {key: [v, ...]}`, `runs: [{key: v, ...}, ...]`, `jobs: [{name: n,
/// config: job.yaml, set: {key: v, ...}}, ...]`; a job's config is relative to the sweep file)
/// into `options`; ConfigError naming the file, line and key on bad input.
void load_sweep_file(const std::string& path, SweepOptions& options);

/// Splits "v1,v2,[a, b]" at top-level commas (not inside [] or {}).
std::vector<std::string> split_values(const std::string& text);

/// The runs of a sweep: grid combinations first (the last key varying fastest), then the explicit
/// runs (named from their overrides, file-name safe), then the named jobs.
std::vector<SweepRun> sweep_runs(const SweepOptions& options);

/// `text` with `${NAME}` and `${NAME:-default}` replaced from `vars`, then the environment: how a
/// sweep file names machine-specific paths (data roots, model files) and `${SWEEP_OUT}`, the
/// sweep directory (a job that starts from an earlier run's model). ConfigError naming `where`
/// for an unset variable without a default or an unclosed `${`.
std::string expand_variables(const std::string& text,
                             const std::map<std::string, std::string>& vars,
                             const std::string& where);

/// Runs the sweep (runs start in their order; `${...}` in job paths and overrides is expanded as
/// each starts). A run whose directory has a summary.json is finished and skipped; one with a
/// resolved_config.yaml but no summary resumes (--resume). A failed run is recorded with the last
/// error of its log and does not stop the others; an interrupted run stops the sweep after the
/// running ones end (Interrupted: rerun to continue). Writes results.json (`{"runs": [...]}`,
/// readable by `pocketflow check`) and results.csv after every finished run; returns the results.
nlohmann::json run_sweep(const SweepOptions& options);

}  // namespace pocketflow
