// SPDX-License-Identifier: Apache-2.0
// `pocketflow sweep`: a job under a grid or list of overrides, runs in child processes.
#include "pocketflow/sweep.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <yaml-cpp/yaml.h>

#include "pocketflow/config.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/learner.h"
#include "pocketflow/pfm.h"
#include "pocketflow/trainer.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// A YAML value as --set text (flow style for sequences and maps).
std::string yaml_text(const YAML::Node& n) {
    if (n.IsScalar() && n.Tag() == "!") {  // quoted in the file: keep it a string
        std::string out = "\"";
        for (char c : n.Scalar()) {
            out += c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c);
        }
        return out + "\"";
    }
    if (n.IsScalar()) {
        return n.Scalar();
    }
    YAML::Emitter e;
    e << YAML::Flow << n;
    return e.c_str();
}

/// FNV-1a, for stable short names of long override lists.
std::string short_hash(const std::string& s) {
    uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : s) {
        h = (h ^ c) * 1099511628211ULL;
    }
    return fmt::format("{:08x}", static_cast<uint32_t>(h ^ (h >> 32)));
}

std::string safe_name(const std::string& text) {
    std::string out;
    for (char c : text) {
        out += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '=' ||
                       c == '_'
                   ? c
                   : '_';
    }
    return out.size() > 120 ? out.substr(0, 100) + "_" + short_hash(text) : out;
}

/// A CSV field, quoted the RFC 4180 way.
std::string csv_field(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        out += c == '"' ? std::string("\"\"") : std::string(1, c);
    }
    return out + "\"";
}

/// The last "[error] ..." line of a run's log, or its last line.
std::string last_error(const fs::path& log) {
    std::ifstream in(log);
    std::string line, error, last;
    while (std::getline(in, line)) {
        if (!line.empty()) {
            last = line;
        }
        const auto at = line.find("[error] ");
        if (at != std::string::npos) {
            error = line.substr(at + 8);
        }
    }
    return error.empty() ? last : error;
}

}  // namespace

std::vector<std::string> split_values(const std::string& text) {
    std::vector<std::string> out;
    std::string cur;
    int depth = 0;
    for (char c : text) {
        if (c == '[' || c == '{') {
            ++depth;
        } else if ((c == ']' || c == '}') && depth > 0) {
            --depth;
        }
        if (c == ',' && depth == 0) {
            out.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    out.push_back(cur);
    for (auto& v : out) {
        const auto b = v.find_first_not_of(" \t");
        const auto e = v.find_last_not_of(" \t");
        v = b == std::string::npos ? std::string() : v.substr(b, e - b + 1);
    }
    return out;
}

void load_sweep_file(const std::string& path, SweepOptions& options) {
    PF_CHECK(fs::is_regular_file(path), ConfigError, "failed to read sweep file {}: {}", path,
             fs::exists(path) ? "not a regular file" : "no such file");
    const YAML::Node root = load_yaml_document(read_file(path), path, "sweep file");
    auto where = [&](const YAML::Node& n) {
        return fmt::format("{}:{}:{}", path, n.Mark().line + 1, n.Mark().column + 1);
    };
    PF_CHECK(root.IsMap(), ConfigError,
             "{}: a sweep file is a mapping with grid:, runs: and/or jobs:", path);
    for (const auto& kv : root) {
        const std::string key = kv.first.as<std::string>();
        if (key == "grid") {
            PF_CHECK(kv.second.IsMap(), ConfigError, "{}: grid: maps job keys to lists of values",
                     where(kv.second));
            for (const auto& g : kv.second) {
                PF_CHECK(g.second.IsSequence() && g.second.size() > 0, ConfigError,
                         "{}: grid.{}: expected a non-empty list of values", where(g.second),
                         g.first.as<std::string>());
                std::vector<std::string> values;
                for (const auto& v : g.second) {
                    values.push_back(yaml_text(v));
                }
                options.grid.push_back({g.first.as<std::string>(), values});
            }
        } else if (key == "runs") {
            PF_CHECK(kv.second.IsSequence(), ConfigError,
                     "{}: runs: is a list of {{key: value}} mappings", where(kv.second));
            for (const auto& r : kv.second) {
                PF_CHECK(r.IsMap(), ConfigError, "{}: each run is a {{key: value}} mapping",
                         where(r));
                std::vector<std::string> sets;
                for (const auto& s : r) {
                    sets.push_back(s.first.as<std::string>() + "=" + yaml_text(s.second));
                }
                options.runs.push_back(sets);
            }
        } else if (key == "jobs") {
            PF_CHECK(kv.second.IsSequence(), ConfigError,
                     "{}: jobs: is a list of {{name: ..., config: ..., set: {{key: value}}}}",
                     where(kv.second));
            for (const auto& j : kv.second) {
                PF_CHECK(j.IsMap(), ConfigError,
                         "{}: each job is a {{name: ..., config: ..., set: {{...}}}} mapping",
                         where(j));
                SweepRun run;
                for (const auto& f : j) {
                    const std::string field = f.first.as<std::string>();
                    if (field == "name" || field == "config") {
                        PF_CHECK(f.second.IsScalar() && !f.second.Scalar().empty(), ConfigError,
                                 "{}: jobs.{}: expected a non-empty string", where(f.second),
                                 field);
                        (field == "name" ? run.name : run.config) = f.second.Scalar();
                    } else if (field == "set") {
                        PF_CHECK(f.second.IsMap(), ConfigError,
                                 "{}: jobs.set: expected {{key: value, ...}}", where(f.second));
                        for (const auto& s : f.second) {
                            run.overrides.push_back(s.first.as<std::string>() + "=" +
                                                    yaml_text(s.second));
                        }
                    } else {
                        throw ConfigError(
                            fmt::format("{}: unknown key jobs.{} (expected name, config, set)",
                                        where(f.first), field));
                    }
                }
                PF_CHECK(!run.name.empty(), ConfigError, "{}: a job needs a name", where(j));
                PF_CHECK(safe_name(run.name) == run.name && run.name[0] != '.', ConfigError,
                         "{}: job name {} is not a plain file name (letters, digits, . - _ =, "
                         "not starting with .)",
                         where(j), shorten(run.name, 80));
                auto ends_with = [&](const std::string& tail) {
                    return run.name.size() >= tail.size() &&
                           run.name.compare(run.name.size() - tail.size(), tail.size(), tail) == 0;
                };
                PF_CHECK(run.name != "results.json" && run.name != "results.csv" &&
                             !ends_with(".log") && !ends_with(".run.json"),
                         ConfigError,
                         "{}: job name {} would collide with the sweep's own files (results.*, "
                         "<run>.log, <run>.run.json)",
                         where(j), run.name);
                if (!run.config.empty() && run.config.find("${") == std::string::npos &&
                    fs::path(run.config).is_relative()) {
                    run.config =
                        (fs::path(path).parent_path() / run.config).lexically_normal().string();
                }
                options.named.push_back(std::move(run));
            }
        } else {
            throw ConfigError(fmt::format("{}: unknown key {} (expected grid, runs, jobs)",
                                          where(kv.first), key));
        }
    }
}

std::vector<SweepRun> sweep_runs(const SweepOptions& options) {
    std::vector<std::vector<std::string>> sets(1);
    for (const auto& [key, values] : options.grid) {
        PF_CHECK(!values.empty(), ConfigError, "sweep: --grid {} has no values", key);
        std::vector<std::vector<std::string>> next;
        for (const auto& s : sets) {
            for (const auto& v : values) {
                auto t = s;
                t.push_back(key + "=" + v);
                next.push_back(std::move(t));
            }
        }
        sets = std::move(next);
    }
    if (options.grid.empty()) {
        sets.clear();
    }
    sets.insert(sets.end(), options.runs.begin(), options.runs.end());
    PF_CHECK(!sets.empty() || !options.named.empty(), ConfigError,
             "sweep: give --grid key=v1,v2 or a --file with runs or jobs");
    std::vector<SweepRun> out;
    std::set<std::string> names;
    for (const auto& job : options.named) {  // named: their names are taken first
        PF_CHECK(names.insert(job.name).second, ConfigError, "sweep: job {} is listed twice",
                 job.name);
    }
    for (size_t i = 0; i < sets.size(); ++i) {
        const std::string text = join(sets[i], "_");
        std::string name = safe_name(text);
        if (name.empty() || !names.insert(name).second) {
            // Two override lists that read alike once made file-name safe: the hash tells them
            // apart, and the same list always gets the same name.
            name = fmt::format("{}_{}", name, short_hash(text + "\n" + std::to_string(i)));
            PF_CHECK(names.insert(name).second, ConfigError, "sweep: run {} is listed twice", text);
        }
        out.push_back({name, options.config, sets[i]});
    }
    out.insert(out.end(), options.named.begin(), options.named.end());
    return out;
}

std::string expand_variables(const std::string& text,
                             const std::map<std::string, std::string>& vars,
                             const std::string& where) {
    std::string out;
    size_t at = 0;
    for (size_t open = text.find("${"); open != std::string::npos; open = text.find("${", at)) {
        const size_t close = text.find('}', open);
        PF_CHECK(close != std::string::npos, ConfigError, "{}: unclosed ${{ in {}", where, text);
        std::string name = text.substr(open + 2, close - open - 2);
        std::optional<std::string> fallback;
        if (const size_t dash = name.find(":-"); dash != std::string::npos) {
            fallback = name.substr(dash + 2);
            name = name.substr(0, dash);
        }
        std::optional<std::string> value;
        if (const auto v = vars.find(name); v != vars.end()) {
            value = v->second;
        } else if (const char* env = std::getenv(name.c_str()); env && *env) {
            value = env;
        }
        PF_CHECK(value || fallback, ConfigError,
                 "{}: ${{{}}} is not set (set the environment variable, or write ${{{}:-default}})",
                 where, name, name);
        out += text.substr(at, open - at) + (value ? *value : *fallback);
        at = close + 1;
    }
    return out + text.substr(at);
}

json run_sweep(const SweepOptions& o) {
    const auto runs = sweep_runs(o);
    const fs::path dir = o.out;
    fs::create_directories(dir);
    remove_stale_temp_files(dir, false);  // its tables' (each run cleans its own directory)
    const int cores = resolve_threads(o.threads);
    int jobs = std::clamp(o.jobs, 1, cores);
    if (jobs < o.jobs) {
        spdlog::warn("sweep: {} jobs at a time on {} cores would oversubscribe them; running {}",
                     o.jobs, cores, jobs);
    }
    // A run that reads an earlier run's output (${SWEEP_OUT}/<run>/...) must start after it ends:
    // such a sweep runs one run at a time.
    const bool chained = std::any_of(runs.begin(), runs.end(), [](const SweepRun& r) {
        return r.config.find("${SWEEP_OUT}") != std::string::npos ||
               std::any_of(r.overrides.begin(), r.overrides.end(), [](const std::string& s) {
                   return s.find("${SWEEP_OUT}") != std::string::npos;
               });
    });
    if (chained && jobs > 1) {
        spdlog::warn(
            "sweep: runs start from earlier runs' results (${{SWEEP_OUT}}): one at a time");
        jobs = 1;
    }
    const int threads = std::max(1, cores / jobs);
    install_stop_handlers();  // a signal between runs stops the sweep after the running ones
    spdlog::info("sweep: {} runs in {}, {} at a time with {} threads each", runs.size(),
                 dir.string(), jobs, threads);
    std::vector<json> results(runs.size());
    std::mutex mutex;
    std::atomic<size_t> next{0};
    std::atomic<bool> interrupted{false};
    auto write_results = [&]() {  // under the mutex
        json table = {{"runs", json::array()}};
        std::string csv =
            "name,status,overrides,top1,val_top1,top5,macs,params,file_bytes,"
            "latency_ms,wall_seconds,run_dir,error\n";
        auto num = [](const json& r, const char* k) {
            return r.contains(k) ? fmt::format("{}", r[k].get<double>()) : std::string();
        };
        for (const auto& r : results) {
            if (r.is_null()) {
                continue;
            }
            table["runs"].push_back(r);
            const std::string error = r.value("error", "");
            csv +=
                fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                            csv_field(r["name"].get<std::string>()), r["status"].get<std::string>(),
                            csv_field(join(r["overrides"].get<std::vector<std::string>>(), " ")),
                            num(r, "top1"), num(r, "val_top1"), num(r, "top5"), num(r, "macs"),
                            num(r, "params"), num(r, "file_bytes"), num(r, "latency_ms"),
                            num(r, "wall_seconds"), csv_field(r["run_dir"].get<std::string>()),
                            csv_field(error));
        }
        write_file_atomic(dir / "results.json", json_text(table, 2));
        write_file_atomic(dir / "results.csv", csv);
    };
    std::exception_ptr failure;  // an error of the sweep itself (not of a run), rethrown at the end
    auto run_one = [&](size_t k) {
        const std::string& name = runs[k].name;
        const fs::path run_dir = dir / name;
        json r = {{"name", name}, {"overrides", runs[k].overrides}, {"run_dir", run_dir.string()}};
        const auto start = std::chrono::steady_clock::now();
        // ${...} expanded now: ${SWEEP_OUT} is this sweep's directory.
        std::string config;
        std::vector<std::string> common, sets;
        try {
            const std::map<std::string, std::string> vars = {{"SWEEP_OUT", dir.string()}};
            const std::string where = "sweep run " + name;
            config = expand_variables(runs[k].config, vars, where);
            for (const auto& t : o.overrides) {
                common.push_back(expand_variables(t, vars, where));
            }
            for (const auto& t : runs[k].overrides) {
                sets.push_back(expand_variables(t, vars, where));
            }
        } catch (const ConfigError& e) {
            r["status"] = "failed";
            r["error"] = e.what();
        }
        // What the run directory holds: a rerun with another job or other overrides must not
        // take its results for this run's.
        const json settings = {{"config", config}, {"set", common}, {"overrides", sets}};
        const fs::path record = dir / (name + ".run.json");
        if (r.contains("status")) {
            // not runnable (above)
        } else if (fs::exists(record) &&
                   json::parse(read_file(record.string()), nullptr, false) != settings) {
            // (a damaged record reads as "discarded": other settings)
            r["status"] = "failed";
            r["error"] = fmt::format(
                "{} holds a run of other settings ({}); use another --out for this sweep",
                run_dir.string(), shorten(read_file(record.string()), 400));
        } else {
            write_file_atomic(record, json_text(settings));
        }
        if (r.contains("status")) {
            // refused above: nothing runs
        } else if (fs::exists(run_dir / "summary.json")) {
            // Finished in an earlier invocation: its results are this run's only if it ran the
            // job this invocation would (the job file may have changed since).
            std::string refused;
            try {
                std::vector<std::string> all = common;
                all.insert(all.end(), sets.begin(), sets.end());
                all.push_back("output_dir=" + run_dir.string());
                const Job now = config.empty() ? default_job(all) : load_job(config, all);
                const fs::path ran = run_dir / "resolved_config.yaml";
                if (!fs::exists(ran) ||
                    !same_job(read_file(ran.string()), resolved_config_text(now))) {
                    refused = fmt::format(
                        "{} holds a finished run of another job (its resolved_config.yaml "
                        "differs from {} with these overrides: was the job file changed?); use "
                        "another --out for this sweep",
                        run_dir.string(), config.empty() ? "the defaults" : config);
                }
            } catch (const Error& e) {
                refused = e.what();
            }
            if (refused.empty()) {
                r["status"] = "ok";
                r["skipped"] = true;
            } else {
                r["status"] = "failed";
                r["error"] = refused;
            }
        } else {
            const bool resume = fs::exists(run_dir / "resolved_config.yaml");
            std::string cmd =
                shell_quote(o.executable) + fmt::format(" --threads {} compress", threads);
            if (!config.empty()) {
                cmd += " --config " + shell_quote(config);
            }
            for (const auto& s : common) {
                cmd += " --set " + shell_quote(s);
            }
            for (const auto& s : sets) {
                cmd += " --set " + shell_quote(s);
            }
            cmd += " --set " + shell_quote("output_dir=" + run_dir.string());
            if (resume) {
                cmd += " --resume";
            }
            const fs::path log = dir / (name + ".log");
            cmd += " >/dev/null 2>>" + shell_quote(log.string());  // kept across resumes
            {
                std::lock_guard<std::mutex> lock(mutex);
                spdlog::info("sweep: run {}/{} {}{}", k + 1, runs.size(), name,
                             resume ? " (resuming)" : "");
            }
            const int status = std::system(cmd.c_str());
            const int code = WIFEXITED(status)     ? WEXITSTATUS(status)
                             : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                                   : 1;
            if (code == 130 || (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT)) {
                interrupted = true;
                r["status"] = "interrupted";
            } else if (code != 0 || !fs::exists(run_dir / "summary.json")) {
                r["status"] = "failed";
                r["error"] =
                    code == 0 ? std::string("the run wrote no summary.json") : last_error(log);
                r["exit_code"] = code;
            } else {
                r["status"] = "ok";
            }
        }
        r["wall_seconds"] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const json summary =
            r["status"] == "ok"
                ? json::parse(read_file((run_dir / "summary.json").string()), nullptr, false)
                : json();
        if (r["status"] == "ok" && !summary.is_object()) {
            r["status"] = "failed";
            r["error"] =
                fmt::format("{} is not a JSON object: rerun the run (delete its directory)",
                            (run_dir / "summary.json").string());
        } else if (r["status"] == "ok") {
            for (const char* key :
                 {"top1", "top5", "loss", "val_top1", "macs", "params", "file_bytes", "seconds"}) {
                if (summary.contains(key) && summary[key].is_number()) {
                    r[key] = summary[key];
                }
            }
            if (r.value("skipped", false)) {
                r["wall_seconds"] = r.value("seconds", 0.0);  // (a number: checked above)
            }
        }
        std::lock_guard<std::mutex> lock(mutex);
        if (r["status"] == "failed") {
            spdlog::error("sweep: {} failed: {}", name, r["error"].get<std::string>());
        } else if (r["status"] == "ok") {
            spdlog::info("sweep: {} {}: top-1 {:.2f}%", name,
                         r.value("skipped", false) ? "was finished" : "done", r.value("top1", 0.0));
        }
        results[k] = std::move(r);
        write_results();
    };
    auto worker = [&]() {
        while (!interrupted && !stop_requested()) {
            const size_t k = next++;
            if (k >= runs.size()) {
                return;
            }
            try {
                run_one(k);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                if (!failure) {
                    failure = std::current_exception();
                }
                interrupted = true;  // start nothing more; the running children finish
                return;
            }
        }
    };
    std::vector<std::thread> pool;
    for (int j = 0; j < jobs; ++j) {
        pool.emplace_back(worker);
    }
    for (auto& t : pool) {
        t.join();
    }
    {
        std::lock_guard<std::mutex> lock(mutex);
        write_results();
    }
    if (failure) {
        std::rethrow_exception(failure);
    }
    if (o.latency_batch > 0 && !interrupted && !stop_requested()) {
        // One interleaved timing loop over every finished model (deployed form: BN folded), so
        // the machine's load hits them alike and their latencies compare.
        std::vector<std::shared_ptr<Model>> models;
        std::vector<size_t> which;
        std::vector<int64_t> shape;
        for (size_t k = 0; k < results.size(); ++k) {
            if (results[k].value("status", "") != "ok") {
                continue;
            }
            ModelFile f = load_model(results[k]["run_dir"].get<std::string>() + "/model.pfm");
            if (!shape.empty() && f.graph.input_shape() != shape) {
                continue;  // (a sweep over input sizes: only the first size is timed)
            }
            shape = f.graph.input_shape();
            models.push_back(std::make_shared<Model>(fold_batch_norm(f.graph), f.meta));
            models.back()->eval();
            which.push_back(k);
        }
        if (!models.empty()) {
            configure_threads(cores);
            spdlog::info("sweep: timing {} models at batch {} ({} threads)", models.size(),
                         o.latency_batch, cores);
            std::vector<Model*> raw;
            for (auto& m : models) {
                raw.push_back(m.get());
            }
            at::Tensor x = at::randn({o.latency_batch, shape[0], shape[1], shape[2]});
            const auto times = time_forward(raw, x, 5, 30);
            for (size_t m = 0; m < which.size(); ++m) {
                std::vector<double> t = times[m];
                std::sort(t.begin(), t.end());
                results[which[m]]["latency_ms"] = t[t.size() / 2];
                results[which[m]]["latency_batch"] = o.latency_batch;
            }
            std::lock_guard<std::mutex> lock(mutex);
            write_results();
        }
    }
    if (interrupted || stop_requested()) {
        throw Interrupted(fmt::format(
            "sweep interrupted; finished runs are kept: rerun the same command to continue ({})",
            (dir / "results.csv").string()));
    }
    json table = {{"runs", json::array()}};
    for (auto& r : results) {
        table["runs"].push_back(r);
    }
    table["results_csv"] = (dir / "results.csv").string();
    table["results_json"] = (dir / "results.json").string();
    return table;
}

}  // namespace pocketflow
