// SPDX-License-Identifier: Apache-2.0
// Running ONNX files in ONNX Runtime (Node.js + onnxruntime-node, tools/ort/run.js).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "pocketflow/error.h"
#include "pocketflow/onnx.h"
#include "pocketflow/util.h"

namespace pocketflow {

std::string ort_runner_path() {
    namespace fs = std::filesystem;
    std::vector<fs::path> candidates;
    if (const char* env = std::getenv("POCKETFLOW_ORT_RUNNER")) {
        candidates.emplace_back(env);
    }
    candidates.emplace_back(fs::path(POCKETFLOW_SOURCE_DIR) / "tools" / "ort" / "run.js");
    for (const auto& c : candidates) {
        if (fs::is_regular_file(c) &&
            fs::is_directory(c.parent_path() / "node_modules" / "onnxruntime-node")) {
            return c.string();
        }
    }
    return "";
}

namespace {

/// Runs tools/ort/run.js with `args` and returns its per-model results; stderr goes to a file in
/// `dir` and into the error when it fails.
nlohmann::json run_node(const std::string& args,
                        const std::filesystem::path& dir,
                        const std::vector<std::string>& onnx_paths) {
    std::string runner = ort_runner_path();
    PF_CHECK(!runner.empty(), Error,
             "ONNX Runtime is not installed (tools/ort/node_modules): run tools/setup.sh --ort");
    PF_CHECK(!onnx_paths.empty(), Error, "no ONNX model to run");
    std::string models;
    for (const auto& path : onnx_paths) {
        models += "--model " + shell_quote(path) + " ";
    }
    const std::string cmd = fmt::format("node {} {}{} 2>{}", shell_quote(runner), models, args,
                                        shell_quote((dir / "err.txt").string()));
    std::string out;
    FILE* pipe = ::popen(cmd.c_str(), "r");
    PF_CHECK(pipe != nullptr, Error, "failed to start node for ONNX Runtime");
    char buf[4096];
    size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) {
        out.append(buf, n);
    }
    int status = ::pclose(pipe);
    if (status != 0) {
        std::string err =
            std::filesystem::exists(dir / "err.txt") ? read_file(dir / "err.txt") : "";
        while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) {
            err.pop_back();
        }
        throw Error(fmt::format("ONNX Runtime failed on {}: {}", fmt::join(onnx_paths, ", "),
                                err.empty() ? "node exited with an error" : err));
    }
    nlohmann::json results = nlohmann::json::parse(out).at("results");
    PF_CHECK(results.size() == onnx_paths.size(), Error,
             "ONNX Runtime reported {} results for {} models", results.size(), onnx_paths.size());
    return results;
}

OrtRun timings(const nlohmann::json& j) {
    OrtRun r;
    r.times_ms = j.at("times_ms").get<std::vector<double>>();
    r.median_ms = j.at("median_ms").get<double>();
    r.p90_ms = j.at("p90_ms").get<double>();
    r.load_ms = j.value("load_ms", 0.0);
    return r;
}

}  // namespace

std::vector<OrtRun> run_onnxruntime(const std::vector<std::string>& onnx_paths,
                                    const at::Tensor& input,
                                    int64_t warmup,
                                    int64_t repeat,
                                    int64_t threads,
                                    const std::string& optimized_path,
                                    int64_t loads) {
    ScopedTempDir scratch("pocketflow-ort");
    const std::filesystem::path& dir = scratch.path();
    at::Tensor x = input.detach().to(at::kFloat).contiguous();
    write_file_atomic(dir / "input.f32", std::string_view(static_cast<const char*>(x.data_ptr()),
                                                          static_cast<size_t>(x.numel()) * 4));
    std::string args =
        fmt::format("--input {} --shape {} --output {} --warmup {} --repeat {} --threads {}",
                    shell_quote((dir / "input.f32").string()), fmt::join(x.sizes().vec(), ","),
                    shell_quote((dir / "output.f32").string()), warmup, repeat, threads);
    if (!optimized_path.empty()) {
        args += " --optimized " + shell_quote(optimized_path);
    }
    if (loads > 1) {
        args += fmt::format(" --loads {}", loads);
    }
    const nlohmann::json results = run_node(args, dir, onnx_paths);
    std::vector<OrtRun> runs;
    for (const auto& j : results) {
        runs.push_back(timings(j));
    }
    auto shape = results.at(0).at("output_shape").get<std::vector<int64_t>>();
    std::string bytes = read_file(dir / "output.f32");
    runs[0].output = at::empty(shape, at::kFloat);
    PF_CHECK(static_cast<int64_t>(bytes.size()) == runs[0].output.numel() * 4, Error,
             "ONNX Runtime returned a short output");
    std::memcpy(runs[0].output.data_ptr(), bytes.data(), bytes.size());
    return runs;
}

std::vector<OrtRun> time_onnxruntime(const std::vector<std::string>& onnx_paths,
                                     const std::vector<std::vector<int64_t>>& shapes,
                                     int64_t warmup,
                                     int64_t repeat,
                                     int64_t threads,
                                     double settle_ms) {
    PF_CHECK(shapes.size() == onnx_paths.size(), Error, "{} input shapes for {} models",
             shapes.size(), onnx_paths.size());
    ScopedTempDir scratch("pocketflow-ort");
    std::vector<std::string> texts;
    for (const auto& shape : shapes) {
        texts.push_back(fmt::format("{}", fmt::join(shape, ",")));
    }
    const std::string args = fmt::format(
        "--input random --shapes {} --warmup {} --repeat {} --threads {} --settle {}",
        shell_quote(fmt::format("{}", fmt::join(texts, ";"))), warmup, repeat, threads, settle_ms);
    std::vector<OrtRun> runs;
    for (const auto& j : run_node(args, scratch.path(), onnx_paths)) {
        runs.push_back(timings(j));
    }
    return runs;
}

OrtRun run_onnxruntime(const std::string& onnx_path,
                       const at::Tensor& input,
                       int64_t warmup,
                       int64_t repeat,
                       int64_t threads,
                       const std::string& optimized_path) {
    return std::move(run_onnxruntime(std::vector<std::string>{onnx_path}, input, warmup, repeat,
                                     threads, optimized_path)
                         .front());
}

}  // namespace pocketflow
