// SPDX-License-Identifier: Apache-2.0
// What the command-line's translation units share: options and the commands on model files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pocketflow/config.h"

namespace pocketflow::cli {

struct GlobalOptions {
    bool json = false;
    int64_t threads = -1;  // -1: from the job (or all cores)
    std::string log_level = "info";
};

struct JobOptions {
    std::string config;
    std::vector<std::string> overrides;
    bool resume = false;
    int64_t stop_after_steps = 0;
    int nproc = 1;                  ///< local data-parallel workers (train, compress)
    std::vector<std::string> argv;  ///< the command line, for --nproc's workers
};

/// The job of a command: its --config file (or the built-in default) with --set overrides.
Job load(const JobOptions& o, const GlobalOptions& g, std::vector<std::string> extra = {});

/// `info`: the per-layer table of a model file or zoo architecture.
int cmd_info(const std::string& model_path,
             const std::string& arch,
             const std::string& input,
             int64_t classes,
             const GlobalOptions& g);

/// `export`: ONNX, optionally checked in ONNX Runtime.
int cmd_export(const std::string& model_path,
               const std::string& format,
               const std::string& out,
               int64_t opset,
               const std::string& batch,
               const std::string& weights,
               bool check,
               const JobOptions& check_job,
               const std::string& reference,
               const GlobalOptions& g);

/// `bench`: interleaved inference timings of models in LibTorch and ONNX Runtime.
int cmd_bench(const std::vector<std::string>& models,
              const std::string& batches_text,
              const std::string& runtimes_text,
              int64_t warmup,
              int64_t repeat,
              const GlobalOptions& g);

}  // namespace pocketflow::cli
