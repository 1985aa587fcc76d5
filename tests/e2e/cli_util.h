// SPDX-License-Identifier: Apache-2.0
// What the end-to-end tests share: running the `pocketflow` binary and the tiny synthetic job.
#pragma once

#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include "pocketflow/util.h"

#include "support/test_util.h"

namespace pocketflow {

struct Result {
    int code = -1;
    std::string out, err;
};

/// Runs a shell command line and captures its stdout and stderr (through a file in `dir`).
inline Result shell(const std::string& cmd, const testing::TempDir& dir) {
    const std::string err_path = dir.file("stderr.txt");
    Result r;
    FILE* pipe = popen(fmt::format("{} 2>'{}'", cmd, err_path).c_str(), "r");
    char buf[4096];
    for (size_t n = 0; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) {
        r.out.append(buf, n);
    }
    const int status = pclose(pipe);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = read_file(err_path);
    return r;
}

/// Runs the CLI with arguments (shell-quoted by the caller) in `dir`.
inline Result cli(const std::string& args, const testing::TempDir& dir) {
    return shell(fmt::format("cd '{}' && '{}' {}", dir.path().string(), POCKETFLOW_CLI, args), dir);
}

inline const char* kTinyJob = R"(name: tiny
seed: 3
threads: 1
model: {arch: lenet5}
data:
  dataset: synthetic
  batch_size: 32
  val_size: 64
  synthetic: {train: 512, test: 128, classes: 4, shape: [1, 12, 12]}
  augment: {crop_padding: 1}
train:
  epochs: 3
  optimizer: {name: sgd, lr: 0.1, momentum: 0.9, nesterov: true}
  checkpoint_every: 3
pipeline:
  - learner: full_precision
)";

/// Writes `job` as job.yaml in `dir` and trains the base model of the search tests in base/;
/// returns the `--set` arguments that start a job from it (empty, with a failure recorded, when
/// the training fails).
inline std::string from_trained_base(const testing::TempDir& dir,
                                     const std::string& job = kTinyJob) {
    write_file_atomic(dir.file("job.yaml"), job);
    Result base = cli("--json train --config job.yaml --set output_dir=base", dir);
    if (base.code != 0) {
        ADD_FAILURE() << "training the base model failed: " << base.err;
        return "";
    }
    return "--set model.arch= --set model.path=base/model.pfm ";
}

}  // namespace pocketflow
