// SPDX-License-Identifier: Apache-2.0
// `pocketflow tune`: Bayesian optimisation of job keys, each trial a run of the job.
#include "pocketflow/tune.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "pocketflow/bayesopt.h"
#include "pocketflow/config.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

TuneSpace load_tune_space(const std::string& path) {
    std::ifstream in(path);
    PF_CHECK(in.good(), InputError, "failed to read the tune space {}: cannot open it", path);
    const YAML::Node root = load_yaml_document(read_file(path), path, "tune space");
    PF_CHECK(root.IsMap(), ConfigError, "{}: a tune space is a mapping (objective, params, ...)",
             path);
    ConfigReader::Source source{path, {}};
    ConfigReader r(root, "", source);
    TuneSpace space;
    space.file = path;
    r.read("objective", space.objective, "a number of each trial's summary.json to optimise");
    std::string direction = "maximize";
    r.read("direction", direction, "maximize or minimize", {"maximize", "minimize"});
    space.maximize = direction == "maximize";
    r.read("trials", space.trials, "trials in all", ConfigReader::in_range(1, 10000));
    space.initial = std::min(space.initial, space.trials);
    r.read("initial", space.initial, "random trials before the GP proposes",
           ConfigReader::in_range(1, 10000));
    r.read("seed", space.seed, "seed of the random trials and proposals");
    YAML::Node params = r.raw("params", "job keys to tune: {key: {min, max, log, integer}}");
    if (!params.IsDefined() || params.IsNull() || !params.IsMap() || params.size() == 0) {
        r.fail("params",
               "give at least one job key to tune, e.g. "
               "{train.optimizer.lr: {min: 0.001, max: 0.1, log: true}}");
    }
    for (const auto& item : params) {
        TuneParam p;
        p.key = item.first.as<std::string>();
        ConfigReader pr(item.second, "params." + p.key, source);
        pr.read("min", p.lo, "smallest value");
        pr.read("max", p.hi, "largest value");
        pr.read("log", p.log, "search on a log scale");
        pr.read("integer", p.integer, "integer values only");
        pr.finish();
        if (!(p.lo < p.hi)) {
            pr.fail("max", fmt::format("must be above min ({})", p.lo));
        }
        if (p.log && p.lo <= 0) {
            pr.fail("min", "must be positive on a log scale");
        }
        space.params.push_back(std::move(p));
    }
    r.finish();
    PF_CHECK(space.initial <= space.trials, ConfigError,
             "{}: initial ({}) cannot exceed trials ({})", path, space.initial, space.trials);
    return space;
}

namespace {

/// A point of [0, 1]^d as the job's values, and back.
double to_value(const TuneParam& p, double u) {
    double v = p.log ? std::exp(std::log(p.lo) + u * (std::log(p.hi) - std::log(p.lo)))
                     : p.lo + u * (p.hi - p.lo);
    if (p.integer) {
        v = std::clamp(std::round(v), std::ceil(p.lo), std::floor(p.hi));
    }
    return v;
}
double to_unit(const TuneParam& p, double v) {
    return p.log ? (std::log(v) - std::log(p.lo)) / (std::log(p.hi) - std::log(p.lo))
                 : (v - p.lo) / (p.hi - p.lo);
}

std::string value_text(const TuneParam& p, double v) {
    return p.integer ? fmt::format("{}", static_cast<int64_t>(v)) : fmt::format("{:.6g}", v);
}

struct Trial {
    std::vector<double> values;
    double objective = 0;
    bool failed = false;
    std::string error;
    double seconds = 0;
};

std::string csv_header(const TuneSpace& space) {
    std::string h = "trial,status," + space.objective;
    for (const auto& p : space.params) {
        h += "," + p.key;
    }
    return h + ",seconds\n";
}

std::vector<Trial> read_trials(const fs::path& csv, const TuneSpace& space) {
    std::vector<Trial> trials;
    std::ifstream in(csv);
    if (!in) {
        return trials;
    }
    std::string line;
    std::getline(in, line);
    PF_CHECK(line + "\n" == csv_header(space), InputError,
             "cannot resume the tune from {}: its columns ({}) are not this space's; use another "
             "--out or delete the file",
             csv.string(), line);
    while (std::getline(in, line)) {
        std::vector<std::string> f;
        std::stringstream ss(line);
        for (std::string field; std::getline(ss, field, ',');) {
            f.push_back(field);
        }
        PF_CHECK(f.size() == space.params.size() + 4, InputError,
                 "cannot resume the tune from {}: line {} has {} fields", csv.string(),
                 trials.size() + 2, f.size());
        Trial t;
        t.failed = f[1] != "ok";
        t.objective = t.failed ? 0 : std::stod(f[2]);
        for (size_t i = 0; i < space.params.size(); ++i) {
            t.values.push_back(std::stod(f[3 + i]));
        }
        t.seconds = std::stod(f.back());
        trials.push_back(std::move(t));
    }
    return trials;
}

}  // namespace

json run_tune(const TuneSpace& space, const TuneOptions& options) {
    const auto job_with = [&](const std::vector<std::string>& extra) {
        std::vector<std::string> o = options.overrides;
        o.insert(o.end(), extra.begin(), extra.end());
        return options.config.empty() ? default_job(o) : load_job(options.config, o);
    };
    const Job base = job_with({});
    // Every key must be a job key that takes numbers: try the box's corners before any trial.
    for (const auto& p : space.params) {
        for (double v : {p.lo, p.hi}) {
            try {
                job_with({p.key + "=" + value_text(p, v)});
            } catch (const Error& e) {
                throw ConfigError(fmt::format("{}: params.{} = {} does not make a valid job: {}",
                                              space.file, p.key, value_text(p, v), e.what()));
            }
        }
    }
    if (space.objective == "top1" || space.objective == "top5" || space.objective == "loss") {
        spdlog::warn(
            "tune: objective {} is measured on the test split: the tuned job will look better "
            "on it than it is; prefer val_top1 (set data.val_size)",
            space.objective);
    }
    if (space.objective == "val_top1") {
        PF_CHECK(base.data.val_size > 0, ConfigError,
                 "tune: objective val_top1 needs a validation split: set data.val_size (e.g. "
                 "5000) in the job or with --set");
    }
    const fs::path dir = options.out_dir.empty() ? fs::path("runs") / (base.name + "-tune")
                                                 : fs::path(options.out_dir);
    const fs::path csv = dir / "trials.csv";
    PF_CHECK(options.resume || !fs::exists(csv), InputError,
             "{} holds an earlier tune: --resume it, or choose another --out", dir.string());
    fs::create_directories(dir);
    remove_stale_temp_files(dir, false);  // its tables' (each run cleans its own directory)
    std::vector<Trial> trials = options.resume ? read_trials(csv, space) : std::vector<Trial>{};
    PF_CHECK(static_cast<int64_t>(trials.size()) <= space.trials, InputError,
             "cannot resume the tune from {}: it has {} trials, the space {}", csv.string(),
             trials.size(), space.trials);
    if (!trials.empty()) {
        spdlog::info("tune: resuming after trial {} of {} ({})", trials.size(), space.trials,
                     csv.string());
    }
    const size_t d = space.params.size();
    auto sign = [&](double v) { return space.maximize ? v : -v; };
    auto best_index = [&]() {
        int best = -1;
        for (size_t k = 0; k < trials.size(); ++k) {
            if (!trials[k].failed &&
                (best < 0 ||
                 sign(trials[k].objective) > sign(trials[static_cast<size_t>(best)].objective))) {
                best = static_cast<int>(k);
            }
        }
        return best;
    };
    auto write_table = [&]() {
        std::string text = csv_header(space);
        for (size_t k = 0; k < trials.size(); ++k) {
            const Trial& t = trials[k];
            text += fmt::format("{},{},{}", k, t.failed ? "failed" : "ok",
                                t.failed ? std::string("") : fmt::format("{}", t.objective));
            for (double v : t.values) {
                text += fmt::format(",{}", v);
            }
            text += fmt::format(",{:.1f}\n", t.seconds);
        }
        write_file_atomic(csv, text);
    };
    for (int64_t k = static_cast<int64_t>(trials.size()); k < space.trials; ++k) {
        // The next point: random at first, then the GP's expected-improvement maximiser. Both
        // depend only on the seed and the trials before, so a resumed tune proposes the same.
        Eigen::VectorXd u(static_cast<Eigen::Index>(d));
        auto round = [&](const Eigen::VectorXd& x) {
            Eigen::VectorXd r = x;
            for (size_t i = 0; i < d; ++i) {
                const auto& p = space.params[i];
                r[static_cast<Eigen::Index>(i)] =
                    to_unit(p, to_value(p, x[static_cast<Eigen::Index>(i)]));
            }
            return r;
        };
        if (k < space.initial || trials.size() < 2) {
            std::mt19937_64 rng(space.seed * 1000003 + static_cast<uint64_t>(k));
            std::uniform_real_distribution<double> unit(0.0, 1.0);
            for (size_t i = 0; i < d; ++i) {
                u[static_cast<Eigen::Index>(i)] = unit(rng);
            }
            u = round(u);
        } else {
            // Failed trials count as the worst result seen, so the GP steers away from them.
            double worst = 1e300;
            for (const Trial& t : trials) {
                if (!t.failed) {
                    worst = std::min(worst, sign(t.objective));
                }
            }
            if (worst == 1e300) {
                worst = 0;
            }
            Eigen::MatrixXd x(static_cast<Eigen::Index>(trials.size()),
                              static_cast<Eigen::Index>(d));
            Eigen::VectorXd y(static_cast<Eigen::Index>(trials.size()));
            for (size_t t = 0; t < trials.size(); ++t) {
                for (size_t i = 0; i < d; ++i) {
                    x(static_cast<Eigen::Index>(t), static_cast<Eigen::Index>(i)) =
                        to_unit(space.params[i], trials[t].values[i]);
                }
                y[static_cast<Eigen::Index>(t)] =
                    trials[t].failed ? worst : sign(trials[t].objective);
            }
            u = propose_next(x, y, space.seed * 1000003 + static_cast<uint64_t>(k), round);
        }
        Trial trial;
        std::vector<std::string> sets;
        std::string shown;
        for (size_t i = 0; i < d; ++i) {
            const auto& p = space.params[i];
            trial.values.push_back(to_value(p, u[static_cast<Eigen::Index>(i)]));
            sets.push_back(p.key + "=" + value_text(p, trial.values.back()));
            shown += (i ? ", " : "") + sets.back();
        }
        const fs::path trial_dir = dir / fmt::format("trial_{}", k);
        sets.push_back("output_dir=" + trial_dir.string());
        spdlog::info("tune: trial {}/{} ({}): {}", k + 1, space.trials,
                     k < space.initial ? "random" : "expected improvement", shown);
        const auto start = std::chrono::steady_clock::now();
        try {
            const Job job = job_with(sets);
            // An interrupted trial resumes from its checkpoints.
            const bool resume_trial = fs::exists(trial_dir / "resolved_config.yaml");
            const json summary = run_job(job, {resume_trial, 0});
            PF_CHECK(summary.contains(space.objective) && summary[space.objective].is_number(),
                     ConfigError,
                     "{}: objective '{}' is not a number of the trial's summary.json (it has: {})",
                     space.file, space.objective, [&] {
                         std::vector<std::string> keys;
                         for (const auto& [key, v] : summary.items()) {
                             if (v.is_number()) {
                                 keys.push_back(key);
                             }
                         }
                         return join(keys, ", ");
                     }());
            trial.objective = summary[space.objective].get<double>();
        } catch (const ConfigError&) {
            throw;  // the space or job is wrong: every trial would fail alike
        } catch (const Interrupted&) {
            throw;
        } catch (const Error& e) {
            trial.failed = true;
            trial.error = e.what();
            spdlog::error("tune: trial {} failed: {}", k, e.what());
        }
        trial.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        trials.push_back(std::move(trial));
        write_table();
        const int best = best_index();
        if (!trials.back().failed) {
            spdlog::info("tune: trial {}/{}: {} {:.4g} (best {:.4g}, trial {})", k + 1,
                         space.trials, space.objective, trials.back().objective,
                         best >= 0 ? trials[static_cast<size_t>(best)].objective : 0.0, best);
        }
    }
    const int best = best_index();
    PF_CHECK(best >= 0, Error, "tune: every trial failed; see {}", csv.string());
    const Trial& b = trials[static_cast<size_t>(best)];
    const fs::path best_dir = dir / fmt::format("trial_{}", best);
    std::string best_yaml =
        fmt::format("# pocketflow tune: trial {} of {}, {} {} ({})\n", best, trials.size(),
                    space.objective, b.objective, space.maximize ? "maximised" : "minimised");
    // The trial's job without its run directory: a rerun gets its own.
    YAML::Node best_job = YAML::LoadFile((best_dir / "resolved_config.yaml").string());
    best_job.remove("output_dir");
    YAML::Emitter emitter;
    emitter << best_job;
    best_yaml += std::string(emitter.c_str()) + "\n";
    write_file_atomic(dir / "best_job.yaml", best_yaml);
    json result = {{"space", space.file},
                   {"objective", space.objective},
                   {"direction", space.maximize ? "maximize" : "minimize"},
                   {"trials", json::array()},
                   {"best_trial", best},
                   {"best_objective", b.objective},
                   {"best_job", (dir / "best_job.yaml").string()},
                   {"table", csv.string()}};
    json best_params;
    for (size_t i = 0; i < d; ++i) {
        best_params[space.params[i].key] = b.values[i];
    }
    result["best_params"] = best_params;
    for (size_t k = 0; k < trials.size(); ++k) {
        json row = {{"trial", k}, {"status", trials[k].failed ? "failed" : "ok"}};
        if (!trials[k].failed) {
            row["objective"] = trials[k].objective;
        }
        for (size_t i = 0; i < d; ++i) {
            row[space.params[i].key] = trials[k].values[i];
        }
        row["seconds"] = trials[k].seconds;
        result["trials"].push_back(row);
    }
    write_file_atomic(dir / "tune.json", json_text(result, 2));
    return result;
}

}  // namespace pocketflow
