// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pocketflow/config.h"
#include "pocketflow/data.h"
#include "pocketflow/model.h"
#include "pocketflow/search.h"
#include "pocketflow/trainer.h"

namespace pocketflow {

/// A run's directory: resolved config, log, metrics.jsonl, checkpoints, model.pfm, summary.json.
/// Only this class writes there; every file except the append-only logs is written atomically.
class RunDir {
public:
    explicit RunDir(std::filesystem::path path);
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path checkpoint(const std::string& tag) const;
    /// Appends one JSON object as a line to metrics.jsonl (flushed).
    void log_metrics(const nlohmann::json& row);

private:
    std::filesystem::path path_;
    std::ofstream metrics_;
    std::mutex mutex_;
};

/// What a learner works with: the job, the current model (replace it to hand a new graph to the
/// next stage), the data, the run directory and this stage's settings.
struct RunContext {
    const Job& job;
    const StageConfig& stage;
    int stage_index = 0;
    std::shared_ptr<Model> model;
    const DataBundle& data;
    RunDir& run;
    bool resume = false;
    int64_t stop_after_steps = 0;  ///< test hook forwarded to trainers
    /// The stage's input model, untouched (the default distillation teacher; learners may read it).
    std::shared_ptr<const Model> input_model;
};

/// A compression (or training) algorithm applied to the context's model. One `run()` per stage.
///
/// Example:
///   class MyLearner : public Learner {
///     nlohmann::json run(RunContext& ctx) override { ...; return {{"pruned", n}}; }
///   };
class Learner {
public:
    virtual ~Learner() = default;
    /// Runs the stage; returns the stage's summary (merged into summary.json under `stages`).
    virtual nlohmann::json run(RunContext& ctx) = 0;
};

/// A learner's registration: name (= folder = YAML `learner:`), one-line summary, and a factory
/// that validates the stage's YAML section and builds the learner (throwing ConfigError on bad
/// options).
struct LearnerInfo {
    std::string name;
    std::string summary;
    std::function<std::unique_ptr<Learner>(const StageConfig& stage, const Job& job)> create;
};

/// Explicit map of learners. Built-ins are listed in learners/builtin.cpp; nothing self-registers.
class LearnerRegistry {
public:
    void add(LearnerInfo info);
    /// The learner of this name, or ConfigError "unknown learner 'x'; did you mean 'y'? available:
    /// …".
    const LearnerInfo& get(const std::string& name) const;
    std::vector<std::string> names() const;

private:
    std::map<std::string, LearnerInfo> learners_;
};

/// A ConfigReader over a stage's YAML section with `learner` already read; a learner's factory
/// reads its own keys from it and calls finish().
ConfigReader stage_reader(const StageConfig& stage, const Job& job);

/// Registers every built-in learner (learners/builtin.cpp).
void register_builtin_learners(LearnerRegistry& registry);
/// The process-wide registry with the built-ins registered.
const LearnerRegistry& builtin_registry();

/// A Trainer for this stage: checkpoint tag `stage<i>_<learner><suffix>`, resume and stop hooks
/// from the context, and the distillation teacher when the job enables distillation (with
/// `input_teacher` false, only a `distillation.teacher` file: not the stage's input model).
Trainer make_trainer(RunContext& ctx,
                     const TrainConfig& config,
                     const std::string& suffix = "",
                     bool input_teacher = true);

/// The stage's teacher for distillation: `distillation.teacher` when set, else a frozen copy of the
/// stage's input model; nullptr when distillation is off.
std::shared_ptr<Model> make_teacher(const RunContext& ctx);

/// A seeded subset of `count` training-split images (sorted, no augmentation, `batch_size` a
/// batch) for calibration: LASSO patches, DCP selection, quantisation ranges. `salt` separates
/// the subsets of different uses.
std::unique_ptr<Loader> calibration_loader(const RunContext& ctx,
                                           int64_t count,
                                           uint64_t salt,
                                           int64_t batch_size = 128);
std::unique_ptr<Loader> calibration_loader(
    const DataBundle& data, const Job& job, int64_t count, uint64_t salt, int64_t batch_size = 128);

/// A seeded random subset of `count` images of the validation split (sorted; the split's own
/// order may follow the classes), for scoring search candidates: images [skip, skip + count) of
/// one seeded shuffle, so subsets with different `skip` do not overlap. ConfigError naming
/// `where` when the job has no validation split: searches never look at the test set.
std::unique_ptr<Loader> search_validation_loader(const RunContext& ctx,
                                                 int64_t count,
                                                 const std::string& where,
                                                 int64_t skip = 0);

/// The directory of a stage's search files, <run>/search/stage<i>/ (one per stage: two searching
/// stages of a job must not share an episode log, which a resume replays).
std::filesystem::path search_dir(const RunContext& ctx);

/// The options every stage's search starts from: `episodes`, `warmup`, the agent seeded from the
/// job's seed and `salt`, the episode log, chart and resume flag in search_dir (created).
SearchOptions stage_search_options(const RunContext& ctx,
                                   int64_t episodes,
                                   int64_t warmup,
                                   uint64_t salt);

/// Runs a stage's search (run_search with stage_search_options) that must beat `baseline`
/// (scored `baseline_score`, named `baseline_name` in the log), logging progress every 10
/// episodes as "<what> episode e/N: top-1 …, best … (<baseline_name> …)".
SearchResult run_stage_search(RunContext& ctx,
                              const SearchSpace& space,
                              int64_t episodes,
                              int64_t warmup,
                              uint64_t salt,
                              const std::string& what,
                              const std::vector<double>& baseline,
                              double baseline_score,
                              const std::string& baseline_name);

/// A per-layer bit-width search (`bits: auto` of uniform_quantization and nonuniform_quantization).
struct BitsSearchSpec {
    std::vector<std::string> layers;  ///< searched layers, in graph order
    BitsBudget budget;                ///< with each layer's weight in the budget filled in
    int64_t episodes = 100, warmup = 20;
    uint64_t salt = 0;
    int64_t val_images = 0;  ///< validation images per candidate (for the summary)
    std::string what;        ///< "bits search", for the log
    std::string unit;        ///< "weight" or "index" bits, for the log and best_bits.yaml
    std::string layers_key;  ///< summary key of the chosen bits per layer
    /// How a layer's width reads in best_bits.yaml (`4`, or `{weights: 4, activations: 8}`).
    std::function<std::string(int)> yaml_value;
};

/// What run_bits_search chose: each layer's bits, and the stage summary's `search` entry.
struct BitsSearchResult {
    std::vector<int> bits;
    nlohmann::json summary;
};

/// Runs a bit-width search: `space` brings the layers' features and the reward of a policy;
/// range, cost and budget come from `spec.budget`. Uniform floor(avg_bits) bits are the baseline
/// it must beat. Logs its start and end, writes search/stage<i>/best_bits.yaml (a pasteable `bits:`
/// map) and returns the bits with the summary entry (`start`: when the search's work began).
BitsSearchResult run_bits_search(RunContext& ctx,
                                 SearchSpace space,
                                 const BitsSearchSpec& spec,
                                 std::chrono::steady_clock::time_point start);

/// Reads a bit-width search's budget keys (`avg_bits`, `min_bits`, `max_bits`) into `budget`,
/// checking min_bits <= avg_bits <= max_bits.
void read_bits_budget(ConfigReader& reader, BitsBudget& budget, const std::string& doc);

/// Reads the keys every search section has: `episodes`, `warmup`, `eval_images`.
void read_search_keys(ConfigReader& reader,
                      int64_t& episodes,
                      int64_t& warmup,
                      int64_t& eval_images);

/// Applies `model.restore_bn` to a freshly loaded model: for a BN-folded graph (folded_convs),
/// measures each conv's output mean and variance on 1,024 training images and re-inserts
/// BatchNorm (insert_batch_norm). Returns the number of BatchNorms inserted.
int restore_batch_norm(const Job& job, const DataBundle& data, std::shared_ptr<Model>& model);

/// A short fine-tuning inside a stage: `steps` steps of the job's recipe at a constant `lr`, one
/// "epoch", no warm-up (channel_pruning's per-group steps, DCP's stage-wise steps).
TrainConfig short_finetune(const TrainConfig& recipe, int64_t steps, double lr);

/// The final fine-tuning of a compression stage: `epochs` of the job's training recipe at
/// learning rate `lr` (distillation as the job says). Adds finetune_epochs, images_per_second and
/// val_top1 to `summary`. Nothing when epochs is 0. `setup` may add hooks to the trainer (e.g. a
/// sparsity schedule).
void finetune_stage(RunContext& ctx,
                    int64_t epochs,
                    double lr,
                    nlohmann::json& summary,
                    const std::function<void(Trainer&)>& setup = {});

/// Optimizer steps per epoch of the job's training recipe (the train split's full batches, capped
/// by train.steps_per_epoch); under data-parallel training, the steps of one worker (its shard),
/// or with `whole_set` those of a training that sees the whole split (one run in dist::run_once).
int64_t steps_per_epoch(const RunContext& ctx, bool whole_set = false);

/// The conv and linear layers of a graph in order, and which are the first layer and the final
/// linear classifier (learners keep those at full precision by default).
struct WeightLayers {
    std::vector<std::string> names;
    std::vector<bool> edge;
};
WeightLayers weight_layers(const Graph& graph);

/// The static state of a conv/linear layer for a per-layer search (HAQ-style): conv or not, log
/// size relative to the `largest` layer's weights, output channels relative to the `widest`,
/// kernel / 7, depthwise or not.
std::vector<double> weight_layer_features(const Node& node, double largest, int64_t widest);

/// Options of a whole run beyond the job itself.
struct RunOptions {
    bool resume = false;
    int64_t stop_after_steps = 0;  ///< hidden test hook: simulate an interruption
};

/// The learners of the job's stages, each with its options validated (ConfigError naming the file,
/// line and key otherwise): what run_job does before any work.
std::vector<std::unique_ptr<Learner>> create_learners(const Job& job);

/// Runs a job end to end: data, model, pipeline stages, final test evaluation, model.pfm,
/// summary.json. Returns the summary (also written to summary.json). One job per process at a
/// time: it sets process-wide state (the default logger's sinks, LibTorch's thread count and
/// random generator, which exact resume checkpoints), so run jobs side by side as processes, as
/// `sweep` does.
nlohmann::json run_job(const Job& job, const RunOptions& options);

/// Builds or loads the job's starting model for data of `input_shape` / `num_classes`.
std::shared_ptr<Model> make_model(const Job& job,
                                  const std::vector<int64_t>& input_shape,
                                  int64_t num_classes,
                                  const std::vector<double>& mean,
                                  const std::vector<double>& std);

/// Sets LibTorch's intra-op threads (0: all cores) and returns the number set.
int configure_threads(int64_t requested);

/// OpenBLAS threads for a scope of heavy dense algebra (LASSO's Gram matrices and least squares):
/// LibTorch's thread count inside, one again after — configure_threads gives OpenBLAS one thread,
/// because its spinning pool beside OpenMP's stalls the convolutions that follow BLAS calls.
class ScopedBlasThreads {
public:
    ScopedBlasThreads();
    ~ScopedBlasThreads();
    ScopedBlasThreads(const ScopedBlasThreads&) = delete;
    ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;
};

/// Keeps freed tensor memory in the process heap instead of returning it to the system after each
/// batch: glibc's defaults unmap and trim large blocks, so every forward pass page-faults its
/// activations back in (measured: about a third of CPU inference time). Call once at start-up.
void configure_allocator();

/// Warns once when LibTorch's BLAS is not OpenBLAS/MKL (reference BLAS is ~25x slower).
void check_blas();

}  // namespace pocketflow
