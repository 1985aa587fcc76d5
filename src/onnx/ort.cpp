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

std::vector<OrtRun> run_onnxruntime(const std::vector<std::string>& onnx_paths,
                                    const at::Tensor& input,
                                    int64_t warmup,
                                    int64_t repeat,
                                    int64_t threads,
                                    const std::string& optimized_path) {
    namespace fs = std::filesystem;
    std::string runner = ort_runner_path();
    PF_CHECK(!runner.empty(), Error,
             "ONNX Runtime is not installed (tools/ort/node_modules): run tools/setup.sh --ort");
    PF_CHECK(!onnx_paths.empty(), Error, "no ONNX model to run");
    ScopedTempDir scratch("pocketflow-ort");
    const fs::path& dir = scratch.path();
    at::Tensor x = input.detach().to(at::kFloat).contiguous();
    write_file_atomic(dir / "input.f32", std::string_view(static_cast<const char*>(x.data_ptr()),
                                                          static_cast<size_t>(x.numel()) * 4));
    auto quote = [](const std::string& text) {  // one shell word, whatever the path holds
        std::string q = "'";
        for (char c : text) {
            q += c == '\'' ? std::string("'\\''") : std::string(1, c);
        }
        return q + "'";
    };
    std::string models;
    for (const auto& path : onnx_paths) {
        models += "--model " + quote(path) + " ";
    }
    if (!optimized_path.empty()) {
        models += "--optimized " + quote(optimized_path) + " ";
    }
    std::string cmd = fmt::format(
        "node {} {}--input {} --shape {} --output {} --warmup {} --repeat {} --threads {} 2>{}",
        quote(runner), models, quote((dir / "input.f32").string()), fmt::join(x.sizes().vec(), ","),
        quote((dir / "output.f32").string()), warmup, repeat, threads,
        quote((dir / "err.txt").string()));
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
        std::string err = fs::exists(dir / "err.txt") ? read_file(dir / "err.txt") : "";
        while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) {
            err.pop_back();
        }
        throw Error(fmt::format("ONNX Runtime failed on {}: {}", fmt::join(onnx_paths, ", "),
                                err.empty() ? "node exited with an error" : err));
    }
    const nlohmann::json results = nlohmann::json::parse(out).at("results");
    PF_CHECK(results.size() == onnx_paths.size(), Error,
             "ONNX Runtime reported {} results for {} models", results.size(), onnx_paths.size());
    std::vector<OrtRun> runs;
    for (const auto& j : results) {
        OrtRun r;
        r.times_ms = j.at("times_ms").get<std::vector<double>>();
        r.median_ms = j.at("median_ms").get<double>();
        r.p90_ms = j.at("p90_ms").get<double>();
        runs.push_back(std::move(r));
    }
    auto shape = results.at(0).at("output_shape").get<std::vector<int64_t>>();
    std::string bytes = read_file(dir / "output.f32");
    runs[0].output = at::empty(shape, at::kFloat);
    PF_CHECK(static_cast<int64_t>(bytes.size()) == runs[0].output.numel() * 4, Error,
             "ONNX Runtime returned a short output");
    std::memcpy(runs[0].output.data_ptr(), bytes.data(), bytes.size());
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
