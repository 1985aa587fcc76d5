// SPDX-License-Identifier: Apache-2.0
// `pocketflow report`: run and sweep directories gathered into one self-contained HTML page.
#include "pocketflow/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include "pocketflow/config.h"
#include "pocketflow/error.h"
#include "pocketflow/json_reader.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

// report_assets.cpp (generated from report.html, report.css, report.js by CMake)
extern const char* const kReportHtml;
extern const char* const kReportCss;
extern const char* const kReportJs;

namespace {

constexpr size_t kMaxCurvePoints = 1500;  // per stage: longer curves are thinned evenly

/// A string / integer field of a record written by a run, or `fallback` when absent or of another
/// type (a hand-edited or damaged file must not stop the report).
std::string text_field(const json& j, const char* key, const std::string& fallback) {
    const auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : fallback;
}

int64_t int_field(const json& j, const char* key, int64_t fallback) {
    const auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : fallback;
}

json parse_json_file(const fs::path& path) {
    return parse_json_text(read_file(path), path.string());
}

/// Training curves from metrics.jsonl, per stage in order of appearance. A resumed run logs some
/// steps twice: the last record of a step wins. x is the step counted across the stages.
json read_curves(const fs::path& path) {
    std::ifstream in(path);
    if (!in) {
        return json::array();
    }
    struct Stage {
        std::map<int64_t, json> steps, epochs;
    };
    std::vector<std::string> order;
    std::map<std::string, Stage> stages;
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) {
            continue;
        }
        json r = json::parse(line, nullptr, false);
        if (r.is_discarded() || !r.is_object()) {
            // A run killed mid-write leaves a partial last line: skip it, say so.
            spdlog::warn("report: {}:{}: not a JSON record, skipped", path.string(), line_no);
            continue;
        }
        const std::string stage = text_field(r, "stage", "train");
        const std::string kind = text_field(r, "kind", "");
        if (!stages.count(stage)) {
            order.push_back(stage);
        }
        Stage& s = stages[stage];
        // Steps beyond 2^40 are not a real run's (and would overflow the offsets below).
        auto counter = [&](const char* key) {
            const int64_t v = int_field(r, key, -1);
            return v >= 0 && v <= (int64_t{1} << 40) ? v : -1;
        };
        if (kind == "step" && counter("step") >= 0) {
            s.steps[counter("step")] = r;
        } else if (kind == "epoch" && counter("epoch") >= 0) {
            s.epochs[counter("epoch")] = r;
        }
    }
    json out = json::array();
    int64_t offset = 0;
    for (const auto& name : order) {
        const Stage& s = stages[name];
        if (s.steps.empty() && s.epochs.empty()) {
            continue;
        }
        json steps = {{"x", json::array()},
                      {"loss", json::array()},
                      {"top1", json::array()},
                      {"lr", json::array()}};
        const size_t stride = (s.steps.size() + kMaxCurvePoints - 1) / kMaxCurvePoints;
        size_t k = 0;
        int64_t last_step = 0;
        std::map<int64_t, int64_t> epoch_end;  // epoch → its last step
        for (const auto& [step, r] : s.steps) {
            last_step = step;
            epoch_end[int_field(r, "epoch", 0)] = step;
            if (k++ % std::max<size_t>(1, stride) != 0 && k != s.steps.size()) {
                continue;
            }
            steps["x"].push_back(offset + step);
            for (const char* key : {"loss", "top1", "lr"}) {
                steps[key].push_back(r.contains(key) && r[key].is_number() ? r[key] : json());
            }
        }
        json epochs = {{"x", json::array()},          {"epoch", json::array()},
                       {"val_top1", json::array()},   {"val_loss", json::array()},
                       {"train_top1", json::array()}, {"train_loss", json::array()}};
        for (const auto& [epoch, r] : s.epochs) {
            const auto end = epoch_end.find(epoch);
            epochs["x"].push_back(offset + (end != epoch_end.end() ? end->second : last_step));
            epochs["epoch"].push_back(epoch);
            for (const char* key : {"val_top1", "val_loss", "train_top1", "train_loss"}) {
                epochs[key].push_back(r.contains(key) && r[key].is_number() ? r[key] : json());
            }
        }
        out.push_back({{"stage", name}, {"offset", offset}, {"steps", steps}, {"epochs", epochs}});
        offset += last_step;
    }
    return out;
}

/// Episode logs of the run's searches (search/stage<i>/episodes.csv; search/episodes.csv in
/// runs made before the per-stage directories).
json read_searches(const fs::path& run) {
    json out = json::array();
    const fs::path root = run / "search";
    if (!fs::is_directory(root)) {
        return out;
    }
    std::vector<fs::path> files;
    if (fs::exists(root / "episodes.csv")) {
        files.push_back(root / "episodes.csv");
    }
    for (const auto& e : fs::directory_iterator(root)) {
        if (e.is_directory() && fs::exists(e.path() / "episodes.csv")) {
            files.push_back(e.path() / "episodes.csv");
        }
    }
    std::sort(files.begin() + (files.empty() || files[0].parent_path() != root ? 0 : 1),
              files.end());
    for (const auto& file : files) {
        std::ifstream in(file);
        std::string header;
        std::getline(in, header);
        std::vector<std::string> columns;
        std::stringstream hs(header);
        for (std::string c; std::getline(hs, c, ',');) {
            columns.push_back(c);
        }
        json s = {{"file", fs::relative(file, run).string()}};
        std::vector<std::string> kept;  // episode, reward and the metrics, not the actions
        for (const auto& c : columns) {
            if (!(c.size() > 1 && c[0] == 'a' && std::isdigit(static_cast<unsigned char>(c[1])))) {
                kept.push_back(c);
                s[c] = json::array();
            }
        }
        for (std::string line; std::getline(in, line);) {
            std::stringstream ls(line);
            std::vector<std::string> cells;
            for (std::string c; std::getline(ls, c, ',');) {
                cells.push_back(c);
            }
            if (cells.size() != columns.size()) {
                continue;  // a torn last line
            }
            for (size_t i = 0; i < columns.size(); ++i) {
                if (s.contains(columns[i])) {
                    char* end = nullptr;
                    const double v = std::strtod(cells[i].c_str(), &end);
                    s[columns[i]].push_back(end != cells[i].c_str() && std::isfinite(v) ? json(v)
                                                                                        : json());
                }
            }
        }
        if (s.contains("episode") && s.contains("reward") && !s["episode"].empty()) {
            s["columns"] = kept;
            out.push_back(std::move(s));
        }
    }
    return out;
}

/// Conv/linear rows of describe_model: what the per-layer charts show.
json weight_layers_of(const json& described) {
    json out = json::array();
    for (const auto& row : described["layers"]) {
        if (!row.contains("weight_shape")) {
            continue;
        }
        json r = {{"name", row["name"]},           {"op", row["op"]},
                  {"out", row["weight_shape"][0]}, {"in", row["weight_shape"][1]},
                  {"params", row["params"]},       {"macs", row["macs"]},
                  {"bytes", row["bytes"]},         {"sparsity", row.value("sparsity", 0.0)}};
        if (row.contains("weight_bits")) {
            r["bits"] = row["weight_bits"];
        } else if (row.contains("codebook_bits")) {
            r["bits"] = row["codebook_bits"];
            r["codebook"] = true;
        } else {
            r["bits"] = 32;
        }
        out.push_back(std::move(r));
    }
    return out;
}

json model_summary(const json& described) {
    return {{"params", described["params"]},
            {"macs", described["macs"]},
            {"weight_bytes", described["weight_bytes"]},
            {"float_bytes", described["float_bytes"]},
            {"sparsity", described["sparsity"]},
            {"quantized", described["quantized"]},
            {"layers", weight_layers_of(described)}};
}

/// A path of the job as the run saw it: relative to where it ran, which may be the current
/// directory or the run directory's ancestors (reports made from elsewhere).
fs::path find_job_path(const std::string& text, const fs::path& run) {
    const fs::path p(text);
    if (p.is_absolute() || fs::exists(p)) {
        return p;
    }
    for (fs::path base = fs::absolute(run); base.has_relative_path(); base = base.parent_path()) {
        if (fs::exists(base / p)) {
            return base / p;
        }
    }
    return p;
}

/// The model before the first compression stage: the output of the training stage before it,
/// else the job's model file, else its zoo architecture rebuilt (structure only).
std::pair<std::string, Graph> model_before(const fs::path& run,
                                           const json& summary,
                                           const Graph& after) {
    const json stages = summary.value("stages", json::array());
    size_t first = 0;
    while (first < stages.size() && text_field(stages[first], "learner", "") == "full_precision") {
        ++first;
    }
    if (first == stages.size()) {
        throw InputError("the run has no compression stage");
    }
    if (first > 0) {
        const fs::path p =
            run / fmt::format("stage{}_{}.pfm", first - 1,
                              text_field(stages[first - 1], "learner", "full_precision"));
        return {p.string(), load_model(p.string()).graph};
    }
    const fs::path config = run / "resolved_config.yaml";
    PF_CHECK(fs::is_regular_file(config), InputError, "{} is missing", config.string());
    const YAML::Node job = load_yaml_document(read_file(config), config.string(), "resolved job");
    const YAML::Node model = job.IsMap() ? job["model"] : YAML::Node();
    PF_CHECK(model && model.IsMap(), InputError, "{}: model: is not a mapping", config.string());
    for (const char* key : {"path", "onnx"}) {
        if (model && model[key] && model[key].IsScalar() && !model[key].Scalar().empty()) {
            const fs::path p = find_job_path(model[key].Scalar(), run);
            PF_CHECK(fs::exists(p), InputError, "the job's model.{} {} is not found from here", key,
                     model[key].Scalar());
            return {p.string(), load_any_model(p.string()).graph};
        }
    }
    const std::string arch =
        model["arch"] && model["arch"].IsScalar() ? model["arch"].Scalar() : std::string();
    PF_CHECK(!arch.empty(), InputError, "{} names no model", config.string());
    const int64_t classes = after.layer_stats()[static_cast<size_t>(after.output())].out_shape[0];
    return {fmt::format("{} (zoo)", arch), build_zoo_model(arch, classes, after.input_shape())};
}

/// Numbers of a run for the comparison table and the scatter plots.
json run_metrics(const json& summary, const json& entry) {
    json m = json::object();
    for (const char* key : {"top1", "top5", "val_top1", "macs", "params", "file_bytes",
                            "weight_bytes", "macs_before", "params_before", "seconds"}) {
        if (summary.contains(key) && summary[key].is_number()) {
            m[key] = summary[key];
        }
    }
    for (const char* key : {"latency_ms", "latency_batch", "wall_seconds"}) {
        if (entry.contains(key) && entry[key].is_number()) {
            m[key] = entry[key];
        }
    }
    return m;
}

json collect_run(const fs::path& dir, const std::string& name, const json& entry) {
    json run = {
        {"name", name}, {"dir", dir.string()}, {"status", text_field(entry, "status", "ok")}};
    if (entry.contains("overrides")) {
        run["overrides"] = entry["overrides"];
    }
    if (run["status"] != "ok") {
        run["error"] = text_field(entry, "error", "");
        return run;
    }
    const fs::path summary_path = dir / "summary.json";
    PF_CHECK(fs::exists(summary_path), InputError,
             "{}: not a finished run directory (no summary.json)", dir.string());
    json summary = parse_json_file(summary_path);
    PF_CHECK(summary.is_object(), InputError, "{}: expected a JSON object (a run's summary)",
             summary_path.string());
    if (summary.contains("stages") && !summary["stages"].is_array()) {
        throw InputError(fmt::format("{}: \"stages\" is not a list", summary_path.string()));
    }
    for (const auto& stage : summary.value("stages", json::array())) {
        PF_CHECK(stage.is_object(), InputError, "{}: a stage that is not an object",
                 summary_path.string());
    }
    run["summary"] = summary;
    run["metrics"] = run_metrics(summary, entry);
    if (fs::exists(dir / "resolved_config.yaml")) {
        run["config"] = read_file(dir / "resolved_config.yaml");
    }
    run["curves"] = read_curves(dir / "metrics.jsonl");
    run["searches"] = read_searches(dir);
    // Per-layer state: the final model against the one the compression started from.
    try {
        const ModelFile after = load_model((dir / "model.pfm").string());
        const json described = describe_model(after.graph);
        run["after"] = model_summary(described);
        try {
            auto [source, before] = model_before(dir, summary, after.graph);
            run["before"] = model_summary(describe_model(before));
            run["before"]["source"] = source;
            run["metrics"]["compression"] = run["before"]["weight_bytes"].get<double>() /
                                            std::max(1.0, described["weight_bytes"].get<double>());
        } catch (const Error& e) {
            run["before_note"] = e.what();
        }
    } catch (const Error& e) {
        run["layers_note"] = e.what();
        spdlog::warn("report: {}: {}", dir.string(), e.what());
    }
    return run;
}

std::string html_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
    for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) {
        s.replace(at, from.size(), to);
    }
}

}  // namespace

json collect_report(const std::vector<std::string>& inputs) {
    PF_CHECK(!inputs.empty(), ConfigError, "report: give one or more run or sweep directories");
    json runs = json::array();
    json sweeps = json::array();
    for (const auto& input : inputs) {
        const fs::path dir(input);
        PF_CHECK(fs::is_directory(dir), InputError, "report: {} is not a directory", input);
        if (fs::exists(dir / "summary.json")) {
            runs.push_back(collect_run(
                dir, dir.filename().empty() ? input : dir.filename().string(), json::object()));
            continue;
        }
        PF_CHECK(fs::exists(dir / "results.json"), InputError,
                 "report: {} is neither a run directory (summary.json) nor a sweep directory "
                 "(results.json)",
                 input);
        const json table = parse_json_file(dir / "results.json");
        PF_CHECK(table.contains("runs") && table["runs"].is_array(), InputError,
                 "{}: expected {{\"runs\": [...]}}", (dir / "results.json").string());
        json names = json::array();
        for (const auto& entry : table["runs"]) {
            PF_CHECK(entry.is_object() && entry.contains("name") && entry["name"].is_string(),
                     InputError, "{}: a run without a name", (dir / "results.json").string());
            const std::string name = entry["name"].get<std::string>();
            // The run directory as recorded (relative to where the sweep ran), else beside
            // results.json (the sweep directory was moved or the report runs elsewhere).
            fs::path run_dir = text_field(entry, "run_dir", "");
            if (run_dir.empty() || !fs::exists(run_dir / "summary.json")) {
                run_dir = dir / name;
            }
            runs.push_back(collect_run(run_dir, name, entry));
            names.push_back(name);
        }
        sweeps.push_back({{"dir", input}, {"runs", names}});
    }
    // The Pareto fronts across all finished runs: top-1 against MACs, latency and stored bytes.
    json fronts = json::object();
    for (const char* cost : {"macs", "latency_ms", "weight_bytes"}) {
        std::vector<std::pair<double, double>> points;
        std::vector<size_t> which;
        for (size_t i = 0; i < runs.size(); ++i) {
            const json& m = runs[i].value("metrics", json::object());
            if (m.contains(cost) && m.contains("top1")) {
                points.push_back({m[cost].get<double>(), m["top1"].get<double>()});
                which.push_back(i);
            }
        }
        json front = json::array();
        if (points.size() < 2) {
            fronts[cost] = front;  // one run is no comparison
            continue;
        }
        for (size_t k : pareto_front(points)) {
            front.push_back(which[k]);  // run indices: names repeat across sweeps
            runs[which[k]]["pareto"][cost] = true;
        }
        fronts[cost] = front;
    }
    const std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    return {{"generated", stamp}, {"version", POCKETFLOW_VERSION},
            {"inputs", inputs},   {"runs", runs},
            {"sweeps", sweeps},   {"pareto", fronts}};
}

std::string render_report(const json& data,
                          const std::string& chartjs_source,
                          const std::string& title) {
    // The data goes into a <script type="application/json"> block: "<" is escaped so that no
    // string in it (a run name, an error message) can close the block.
    std::string payload = data.dump(-1, ' ', false, json::error_handler_t::replace);
    replace_all(payload, "<", "\\u003c");
    std::string chart = chartjs_source;
    replace_all(chart, "</script", "<\\/script");
    const std::map<std::string, std::string> parts = {{"TITLE", html_escape(title)},
                                                      {"CSS", kReportCss},
                                                      {"JS", kReportJs},
                                                      {"DATA", payload},
                                                      {"CHARTJS", chart}};
    // One pass over the template: inserted text is never searched for placeholders.
    const std::string page_template = kReportHtml;
    std::string page;
    size_t at = 0;
    for (size_t open = page_template.find('@'); open != std::string::npos;
         open = page_template.find('@', at)) {
        const size_t close = page_template.find('@', open + 1);
        const auto part = close == std::string::npos
                              ? parts.end()
                              : parts.find(page_template.substr(open + 1, close - open - 1));
        if (part == parts.end()) {
            page += page_template.substr(at, open + 1 - at);
            at = open + 1;
            continue;
        }
        page += page_template.substr(at, open - at) + part->second;
        at = close + 1;
    }
    page += page_template.substr(at);
    return page;
}

std::string find_chartjs(const std::string& path) {
    std::vector<std::string> candidates;
    if (!path.empty()) {
        candidates = {path};
    } else if (const char* env = std::getenv("POCKETFLOW_CHARTJS"); env && *env) {
        candidates = {env};
    } else {
        candidates = {"/usr/share/javascript/chart.js/chart.min.js",
                      "/usr/share/javascript/chart.js/chart.js"};
    }
    for (const auto& c : candidates) {
        if (fs::is_regular_file(c)) {
            std::string text = read_file(c);
            PF_CHECK(text.find("Chart") != std::string::npos, InputError,
                     "{} does not look like Chart.js", c);
            return text;
        }
    }
    throw InputError(fmt::format(
        "report: Chart.js not found ({}); install Debian's libjs-chart.js (tools/setup.sh does) "
        "or give --chartjs PATH to chart.min.js (3.x UMD build)",
        join(candidates, ", ")));
}

}  // namespace pocketflow
