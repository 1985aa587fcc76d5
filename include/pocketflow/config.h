// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace pocketflow {

/// Reads one YAML mapping into typed fields, checking types, ranges and unknown keys, and reporting
/// every problem as `file:line:col: failed to read <key.path> with <value>: <rule>` (ConfigError).
///
/// Example:
///   ConfigReader r(node, "train", ctx);
///   r.read("epochs", cfg.epochs, "number of epochs", ConfigReader::at_least(1));
///   r.finish();   // unknown keys -> "unknown key train.epohcs; did you mean 'epochs'?"
class ConfigReader {
public:
    /// Where values came from: the file name and which key paths were set by --set overrides.
    struct Source {
        std::string file;
        std::set<std::string> overridden;
    };
    using Check = std::function<std::string(double)>;  // returns "" when fine, else the rule broken

    ConfigReader(const YAML::Node& node, std::string path, const Source& source);

    void read(const std::string& key,
              std::string& out,
              const std::string& doc,
              const std::vector<std::string>& choices = {});
    void read(const std::string& key, bool& out, const std::string& doc);
    void read(const std::string& key,
              int64_t& out,
              const std::string& doc,
              const Check& check = {});
    void read(const std::string& key, int& out, const std::string& doc, const Check& check = {});
    void read(const std::string& key, uint64_t& out, const std::string& doc);
    void read(const std::string& key, double& out, const std::string& doc, const Check& check = {});
    void read(const std::string& key,
              std::vector<double>& out,
              const std::string& doc,
              const Check& check = {});
    void read(const std::string& key,
              std::vector<int64_t>& out,
              const std::string& doc,
              const Check& check = {});
    /// A nested mapping (possibly absent: then an empty map node is passed to `fn`).
    void section(const std::string& key,
                 const std::string& doc,
                 const std::function<void(ConfigReader&)>& fn);
    /// The raw node of a key, marking it as known (for lists of sections).
    YAML::Node raw(const std::string& key, const std::string& doc);
    bool has(const std::string& key) const;
    /// The values read so far, defaults included (for resolved_config.yaml).
    const YAML::Node& resolved() const { return resolved_; }

    /// Throws for keys that no read() asked for, with the nearest known key and the full list.
    void finish();

    /// Throws ConfigError located at `key` (or at the mapping itself when key is empty).
    [[noreturn]] void fail(const std::string& key, const std::string& message) const;
    std::string key_path(const std::string& key) const;
    /// "file:line:col" (or "--set a.b") of a key, for messages.
    std::string location(const std::string& key) const;
    /// "file:line:col" of a node inside this mapping (an entry of a list or nested map).
    std::string location_of(const YAML::Node& node) const;

    static Check at_least(double lo);
    static Check in_range(double lo, double hi);       // lo <= v <= hi
    static Check in_open_range(double lo, double hi);  // lo < v <= hi

private:
    const YAML::Node* find(const std::string& key) const;
    YAML::Node value_node(const std::string& key, const std::string& doc);

    YAML::Node node_;
    std::string path_;
    const Source& source_;
    std::vector<std::string> known_;
    YAML::Node resolved_;
    mutable YAML::Node found_;
};

struct ModelConfig {
    std::string arch;  ///< zoo name (lenet5, resnet20, ...), or empty when `path` is given
    std::string path;  ///< a .pfm model to start from (graph + weights)
    std::string onnx;  ///< an ONNX model to import (graph + weights)
    std::vector<int64_t>
        input;         ///< [C, H, W] for ONNX files with symbolic sizes (empty: from the file)
    std::string init;  ///< a .pfm whose weights initialise `arch` (same graph)
    int64_t num_classes = 0;  ///< 0: from the dataset
    int64_t in_channels = 0;  ///< 0: from the dataset
    /// Re-insert BatchNorm after the convs of a BN-folded (eval-mode) export before training:
    /// auto (ONNX models with no BatchNorm and at least 6 biased convs), true, false.
    std::string restore_bn = "auto";
};

struct AugmentConfig {
    int64_t crop_padding = 0;          ///< random crop after zero padding by this many pixels
    bool hflip = false;                ///< random horizontal flip
    bool random_resized_crop = false;  ///< ImageNet-style random-resized crop (image folders)
    double min_scale = 0.08;           ///< smallest area fraction of random_resized_crop
};

struct DataConfig {
    std::string dataset =
        "fashion_mnist";  ///< fashion_mnist | mnist | cifar10 | cifar100 | imagefolder | synthetic
    std::string root;     ///< default: /usr/share/datasets/fashion-mnist for fashion_mnist
    int64_t batch_size = 128;
    int64_t eval_batch_size = 256;
    int64_t val_size = 0;      ///< images carved from the training set (seeded)
    int64_t workers = 1;       ///< background threads preparing batches
    int64_t train_limit = 0;   ///< use only the first N training images (0: all)
    int64_t test_limit = 0;    ///< use only the first N test images (0: all)
    int64_t image_size = 224;  ///< imagefolder: crop size
    int64_t resize = 256;      ///< imagefolder: shorter side before the centre crop
    /// Convert every image to {C, H, W} (bilinear resize; 1 channel copied to 3 or 3 averaged to
    /// 1), e.g. Fashion-MNIST for an ImageNet-shaped model. Empty: as stored.
    std::vector<int64_t> reshape;
    std::vector<double> mean;  ///< per-channel normalisation (default: the dataset's)
    std::vector<double> std;
    AugmentConfig augment;
    // synthetic data (tests, smoke runs)
    int64_t synthetic_train = 512;
    int64_t synthetic_test = 256;
    int64_t synthetic_classes = 10;
    std::vector<int64_t> synthetic_shape = {1, 16, 16};
};

struct OptimizerConfig {
    std::string name = "sgd";  ///< sgd | adam | adamw
    double lr = 0.1;
    double momentum = 0.9;
    bool nesterov = false;
    double weight_decay = 5e-4;
    double beta1 = 0.9;
    double beta2 = 0.999;
};

struct ScheduleConfig {
    std::string name = "cosine";      ///< cosine | step | multistep | constant
    double warmup_epochs = 0;         ///< linear warm-up from 0 over this many epochs
    double lr_min = 0;                ///< cosine floor
    double gamma = 0.1;               ///< step/multistep factor
    int64_t step_size = 30;           ///< step: epochs between decays
    std::vector<int64_t> milestones;  ///< multistep: epochs where lr *= gamma
};

struct TrainConfig {
    int64_t epochs = 1;
    OptimizerConfig optimizer;
    ScheduleConfig schedule;
    double label_smoothing = 0;
    double grad_clip = 0;          ///< max global gradient norm (0: off)
    int64_t log_every = 50;        ///< steps between log lines / metrics rows
    int64_t checkpoint_every = 0;  ///< steps between checkpoints (0: epoch ends only)
    int64_t steps_per_epoch = 0;   ///< cap on steps per epoch (0: the whole training set)
    /// Data-parallel learning-rate rule (trainer.h lr_scale_for): linear | sqrt | none.
    std::string lr_scaling = "linear";
    int64_t reference_batch = 0;  ///< global batch the lr is tuned for (0: data.batch_size)
    bool sync_bn = false;  ///< data-parallel: BatchNorm over the global batch (distributed.h)
};

struct DistillationConfig {
    bool enabled = false;
    std::string teacher;  ///< .pfm path; empty: the stage's input model
    double temperature = 4.0;
    double weight = 0.5;
};

struct ExportConfig {
    bool onnx = false;          ///< write model.onnx into the run directory
    int64_t opset = 13;         ///< ONNX opset 11–17
    bool dynamic_batch = true;  ///< symbolic batch dimension
};

/// One stage of the pipeline: the learner's name and its own section, validated by the learner.
/// A per-layer number in a stage (sparsity, bits): one value for every layer, a map
/// `{default: v, "glob": v, ...}` (globs on node names; later entries win), a list with one value
/// per layer in graph order, or `auto` (searched) where the learner allows it.
struct PerLayerSetting {
    bool given = false;
    bool is_auto = false;
    bool has_value = false;  ///< a scalar, or the map's `default`
    double value = 0;
    struct Rule {
        std::string glob;
        double value = 0;
        std::string where;
    };
    std::vector<Rule> rules;
    std::vector<double> list;
    std::string path;   ///< key path, for messages
    std::string where;  ///< file:line:col of the key
};

/// Reads a PerLayerSetting, checking every value with `check` (ConfigError naming the entry).
PerLayerSetting read_per_layer(ConfigReader& reader,
                               const std::string& key,
                               const std::string& doc,
                               const ConfigReader::Check& check,
                               bool allow_auto);

/// The values a setting names explicitly for `layers` (node names in graph order): the list's, or
/// the last matching glob's; the others are left empty for the learner's default. ConfigError for
/// a glob that matches no layer or a list of the wrong length, listing the layers.
std::vector<std::optional<double>> resolve_per_layer(const PerLayerSetting& setting,
                                                     const std::vector<std::string>& layers);

struct StageConfig {
    std::string learner;
    YAML::Node options;  ///< the whole stage mapping (including `learner`)
    std::string path;    ///< key path, e.g. pipeline[1]
};

/// A validated job: everything a run needs, checked before any work starts.
struct Job {
    std::string name = "job";
    uint64_t seed = 0;
    int64_t threads = 0;     ///< 0: all cores
    std::string output_dir;  ///< default: runs/<name>/<timestamp>
    ModelConfig model;
    DataConfig data;
    TrainConfig train;
    DistillationConfig distillation;
    ExportConfig export_;  ///< YAML key `export`
    std::vector<StageConfig> pipeline;

    YAML::Node resolved;  ///< the tree after overrides, written as resolved_config.yaml
    ConfigReader::Source source;
};

/// Applies `key.path=value` overrides (value parsed as YAML) to a tree; pipeline entries are
/// addressed by index (pipeline.0.learner). Records the overridden paths in `source`.
void apply_overrides(YAML::Node& root,
                     const std::vector<std::string>& overrides,
                     ConfigReader::Source& source);

/// The one YAML document of a file (a job, a sweep, a search space): ConfigError naming the file
/// and line for a syntax error, a second document, a duplicate key or text that is not UTF-8.
YAML::Node load_yaml_document(const std::string& text,
                              const std::string& file,
                              const std::string& what);

/// Parses and validates a job from YAML text. `file` names it in messages.
Job parse_job(const std::string& yaml_text,
              const std::string& file,
              const std::vector<std::string>& overrides = {});

/// Loads a job file (InputError if it cannot be read, ConfigError if invalid).
Job load_job(const std::string& path, const std::vector<std::string>& overrides = {});

/// A job with no file: the built-in defaults plus overrides (used by `eval` without --config).
Job default_job(const std::vector<std::string>& overrides = {});

/// The job as a run's resolved_config.yaml holds it (Job::resolved as YAML text).
std::string resolved_config_text(const Job& job);

/// Whether two resolved_config.yaml texts are the same job: equal but for `threads` (which changes
/// the speed, not the results). A text that does not parse is another job.
bool same_job(const std::string& resolved_a, const std::string& resolved_b);

}  // namespace pocketflow
