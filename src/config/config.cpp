// SPDX-License-Identifier: Apache-2.0
// The job file: YAML loading with line-checked syntax, --set overrides, and the job schema read
// with ConfigReader (config_reader.cpp).
#include "pocketflow/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>

#include <fnmatch.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

namespace pocketflow {

namespace fs = std::filesystem;

void apply_overrides(YAML::Node& root,
                     const std::vector<std::string>& overrides,
                     ConfigReader::Source& source) {
    for (const auto& text : overrides) {
        auto eq = text.find('=');
        PF_CHECK(eq != std::string::npos && eq > 0, ConfigError,
                 "--set {}: failed to parse override: expected key.path=value", text);
        std::string path = text.substr(0, eq);
        std::string value = text.substr(eq + 1);
        YAML::Node parsed;
        try {
            parsed = YAML::Load(value);
        } catch (const YAML::Exception& e) {
            throw ConfigError(
                fmt::format("--set {}: failed to parse value '{}': {}", path, value, e.msg));
        }
        std::vector<std::string> parts;
        size_t start = 0;
        while (true) {
            size_t dot = path.find('.', start);
            parts.push_back(path.substr(start, dot - start));
            if (dot == std::string::npos) {
                break;
            }
            start = dot + 1;
        }
        if (!root || !root.IsMap()) {
            root = YAML::Node(YAML::NodeType::Map);
        }
        YAML::Node cur;
        cur.reset(root);
        std::string canonical;
        for (size_t i = 0; i < parts.size(); ++i) {
            const std::string& part = parts[i];
            PF_CHECK(!part.empty(), ConfigError, "--set {}: empty key in path", path);
            bool last = i + 1 == parts.size();
            if (cur.IsSequence()) {
                char* end = nullptr;
                long idx = std::strtol(part.c_str(), &end, 10);
                PF_CHECK(*end == '\0' && idx >= 0 && static_cast<size_t>(idx) < cur.size(),
                         ConfigError, "--set {}: '{}' is not an index of the list ({} entries)",
                         path, part, cur.size());
                canonical += fmt::format("[{}]", idx);
                if (last) {
                    cur[static_cast<size_t>(idx)] = parsed;
                } else {
                    YAML::Node next = cur[static_cast<size_t>(idx)];
                    cur.reset(next);
                }
                continue;
            }
            if (!cur.IsMap()) {
                PF_CHECK(cur.IsNull(), ConfigError, "--set {}: {} is not a mapping", path,
                         canonical);
                cur = YAML::Node(YAML::NodeType::Map);
            }
            canonical += (canonical.empty() ? "" : ".") + part;
            if (last) {
                cur[part] = parsed;
            } else {
                if (!cur[part] || cur[part].IsNull()) {
                    cur[part] = YAML::Node(YAML::NodeType::Map);
                }
                YAML::Node next = cur[part];
                cur.reset(next);
            }
        }
        source.overridden.insert(canonical);
    }
}

namespace {

std::vector<double> default_mean(const std::string& dataset) {
    if (dataset == "fashion_mnist") {
        return {0.2860};
    }
    if (dataset == "mnist") {
        return {0.1307};
    }
    if (dataset == "cifar10") {
        return {0.4914, 0.4822, 0.4465};
    }
    if (dataset == "cifar100") {
        return {0.5071, 0.4865, 0.4409};
    }
    if (dataset == "imagefolder") {
        return {0.485, 0.456, 0.406};
    }
    return {0.5};  // synthetic
}

std::vector<double> default_std(const std::string& dataset) {
    if (dataset == "fashion_mnist") {
        return {0.3530};
    }
    if (dataset == "mnist") {
        return {0.3081};
    }
    if (dataset == "cifar10") {
        return {0.2470, 0.2435, 0.2616};
    }
    if (dataset == "cifar100") {
        return {0.2673, 0.2564, 0.2762};
    }
    if (dataset == "imagefolder") {
        return {0.229, 0.224, 0.225};
    }
    return {0.3};  // synthetic
}

void require_file(ConfigReader& r, const std::string& key, const std::string& path) {
    if (!path.empty() && !fs::is_regular_file(path)) {
        r.fail(key, fs::exists(path) ? "not a regular file" : "no such file");
    }
}

void parse_model(ConfigReader& r, ModelConfig& m) {
    std::vector<std::string> archs = zoo_names();
    r.read("arch", m.arch, "zoo architecture: " + join(archs, ", "));
    r.read("path", m.path, "a .pfm model to start from (graph and weights)");
    r.read("onnx", m.onnx, "an ONNX model to import (graph and weights)");
    r.read("init", m.init, "a .pfm whose weights initialise `arch`");
    r.read("num_classes", m.num_classes, "classes (0: from the dataset)",
           ConfigReader::at_least(0));
    r.read("in_channels", m.in_channels, "input channels (0: from the dataset)",
           ConfigReader::at_least(0));
    r.read("input", m.input, "[C, H, W] for ONNX files with symbolic sizes",
           ConfigReader::in_range(1, 100000));
    r.read("restore_bn", m.restore_bn,
           "re-insert BatchNorm after the convs of a BN-folded export before training",
           {"auto", "true", "false"});
    int sources = static_cast<int>(!m.arch.empty()) + static_cast<int>(!m.path.empty()) +
                  static_cast<int>(!m.onnx.empty());
    if (sources != 1) {
        r.fail(sources == 0 ? "" : (m.onnx.empty() ? "path" : "onnx"),
               "give exactly one of model.arch, model.path or model.onnx");
    }
    if (!m.arch.empty() && std::find(archs.begin(), archs.end(), m.arch) == archs.end()) {
        std::string hint = nearest_match(m.arch, archs);
        r.fail("arch", fmt::format("unknown architecture{}; available: {}",
                                   hint.empty() ? "" : fmt::format(" (did you mean '{}'?)", hint),
                                   join(archs, ", ")));
    }
    require_file(r, "path", m.path);
    require_file(r, "onnx", m.onnx);
    require_file(r, "init", m.init);
    if (!m.init.empty() && m.arch.empty()) {
        r.fail("init", "init needs model.arch (model.path and model.onnx already carry weights)");
    }
    if (!m.input.empty() && m.input.size() != 3) {
        r.fail("input", "expected [C, H, W]");
    }
}

void parse_data(ConfigReader& r, DataConfig& d) {
    r.read("dataset", d.dataset, "which data set",
           {"fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic"});
    if (d.dataset == "fashion_mnist") {
        d.root = "/usr/share/datasets/fashion-mnist";
    }
    r.read("root", d.root, "directory holding the data set's files");
    r.read("batch_size", d.batch_size, "training batch size", ConfigReader::at_least(1));
    r.read("eval_batch_size", d.eval_batch_size, "evaluation batch size",
           ConfigReader::at_least(1));
    r.read("val_size", d.val_size, "images carved from the training set for validation",
           ConfigReader::at_least(0));
    r.read("workers", d.workers, "background threads preparing batches",
           ConfigReader::in_range(1, 64));
    r.read("train_limit", d.train_limit, "use only the first N training images (0: all)",
           ConfigReader::at_least(0));
    r.read("test_limit", d.test_limit, "use only the first N test images (0: all)",
           ConfigReader::at_least(0));
    r.read("image_size", d.image_size, "imagefolder: crop size", ConfigReader::at_least(8));
    r.read("resize", d.resize, "imagefolder: shorter side before cropping",
           ConfigReader::at_least(8));
    r.read("reshape", d.reshape,
           "convert every image to [C, H, W] (bilinear; grey to 3 channels by copying)",
           ConfigReader::in_range(1, 4096));
    if (!d.reshape.empty() && (d.reshape.size() != 3 || (d.reshape[0] != 1 && d.reshape[0] != 3))) {
        r.fail("reshape", "expected [C, H, W] with C 1 or 3");
    }
    d.mean = default_mean(d.dataset);
    d.std = default_std(d.dataset);
    r.read("mean", d.mean, "per-channel mean for normalisation", ConfigReader::in_range(-10, 10));
    r.read("std", d.std, "per-channel std for normalisation", ConfigReader::in_open_range(0, 100));
    r.section("augment", "training augmentation", [&](ConfigReader& a) {
        a.read("crop_padding", d.augment.crop_padding, "random crop after zero padding",
               ConfigReader::in_range(0, 64));
        a.read("hflip", d.augment.hflip, "random horizontal flip");
        a.read("random_resized_crop", d.augment.random_resized_crop,
               "ImageNet-style random-resized crop");
        a.read("min_scale", d.augment.min_scale, "smallest area fraction for random_resized_crop",
               ConfigReader::in_open_range(0, 1));
    });
    r.section("synthetic", "synthetic data set (dataset: synthetic)", [&](ConfigReader& s) {
        s.read("train", d.synthetic_train, "training images", ConfigReader::at_least(1));
        s.read("test", d.synthetic_test, "test images", ConfigReader::at_least(1));
        s.read("classes", d.synthetic_classes, "classes", ConfigReader::in_range(2, 1000));
        s.read("shape", d.synthetic_shape, "image shape [C, H, W]", ConfigReader::in_range(1, 512));
        if (d.synthetic_shape.size() != 3) {
            s.fail("shape", "expected [C, H, W]");
        }
    });
    if (d.dataset != "synthetic") {
        if (d.root.empty()) {
            r.fail("root", "data.root is required for dataset " + d.dataset);
        }
        if (!fs::is_directory(d.root)) {
            r.fail("root", "no such directory");
        }
    }
    if (!d.mean.empty() && d.mean.size() != d.std.size()) {
        r.fail("std", fmt::format("has {} values but mean has {}", d.std.size(), d.mean.size()));
    }
}

void parse_train(ConfigReader& r, TrainConfig& t) {
    r.read("epochs", t.epochs, "training epochs", ConfigReader::in_range(1, 100000));
    r.section("optimizer", "optimizer", [&](ConfigReader& o) {
        auto& c = t.optimizer;
        o.read("name", c.name, "optimizer", {"sgd", "adam", "adamw"});
        if (c.name != "sgd") {
            c.lr = 1e-3;
            c.weight_decay = c.name == "adamw" ? 1e-2 : 0.0;
        }
        o.read("lr", c.lr, "base learning rate", ConfigReader::in_open_range(0, 100));
        o.read("momentum", c.momentum, "SGD momentum", ConfigReader::in_range(0, 0.9999));
        o.read("nesterov", c.nesterov, "Nesterov momentum");
        o.read("weight_decay", c.weight_decay, "L2 weight decay", ConfigReader::in_range(0, 1));
        o.read("beta1", c.beta1, "Adam beta1", ConfigReader::in_range(0, 0.9999));
        o.read("beta2", c.beta2, "Adam beta2", ConfigReader::in_range(0, 0.99999));
        if (c.nesterov && c.momentum == 0) {
            o.fail("nesterov", "Nesterov momentum needs momentum > 0");
        }
    });
    r.section("schedule", "learning-rate schedule", [&](ConfigReader& s) {
        auto& c = t.schedule;
        s.read("name", c.name, "schedule", {"cosine", "step", "multistep", "constant"});
        s.read("warmup_epochs", c.warmup_epochs, "linear warm-up epochs",
               ConfigReader::in_range(0, 1000));
        s.read("lr_min", c.lr_min, "cosine floor", ConfigReader::in_range(0, 100));
        s.read("gamma", c.gamma, "decay factor (step, multistep)",
               ConfigReader::in_open_range(0, 1));
        s.read("step_size", c.step_size, "epochs between decays (step)", ConfigReader::at_least(1));
        s.read("milestones", c.milestones, "epochs where lr *= gamma (multistep)",
               ConfigReader::at_least(1));
        if (c.name == "multistep" && c.milestones.empty()) {
            s.fail("milestones", "multistep needs milestones");
        }
    });
    r.read("label_smoothing", t.label_smoothing, "label smoothing epsilon",
           ConfigReader::in_range(0, 0.999));
    r.read("grad_clip", t.grad_clip, "max global gradient norm (0: off)",
           ConfigReader::at_least(0));
    r.read("log_every", t.log_every, "steps between log lines", ConfigReader::at_least(1));
    r.read("checkpoint_every", t.checkpoint_every, "steps between checkpoints (0: epoch ends)",
           ConfigReader::at_least(0));
    r.read("steps_per_epoch", t.steps_per_epoch, "cap on steps per epoch (0: all)",
           ConfigReader::at_least(0));
    r.read("lr_scaling", t.lr_scaling,
           "learning rate for a data-parallel global batch: x global/reference_batch (linear), "
           "its square root (sqrt) or unchanged (none)",
           {"linear", "sqrt", "none"});
    r.read("sync_bn", t.sync_bn,
           "data-parallel workers: BatchNorm normalises over the global batch, not each "
           "worker's");
    r.read("reference_batch", t.reference_batch,
           "global batch train.optimizer.lr is tuned for (0: data.batch_size)",
           ConfigReader::in_range(0, 1 << 24));
}

void parse_distillation(ConfigReader& r, DistillationConfig& d) {
    r.read("enabled", d.enabled, "add the distillation loss to training");
    r.read("teacher", d.teacher, "teacher .pfm (default: the stage's input model)");
    r.read("temperature", d.temperature, "softmax temperature T",
           ConfigReader::in_open_range(0, 100));
    r.read("weight", d.weight, "weight w of the distillation term", ConfigReader::in_range(0, 1));
    require_file(r, "teacher", d.teacher);
}

Job parse_tree(YAML::Node root, ConfigReader::Source source) {
    Job job;
    job.source = std::move(source);
    if (!root || root.IsNull()) {
        root = YAML::Node(YAML::NodeType::Map);
    }
    ConfigReader r(root, "", job.source);
    r.read("name", job.name, "job name (run directory runs/<name>/<timestamp>)");
    if (job.name.empty() || job.name.find('/') != std::string::npos || job.name == "." ||
        job.name == "..") {
        r.fail("name", "must be a non-empty name without '/'");
    }
    if (job.name.size() > 128) {  // it names a directory: file names stop at 255 bytes
        r.fail("name", fmt::format("is {} characters long; at most 128 (it names the run "
                                   "directory runs/<name>/)",
                                   job.name.size()));
    }
    r.read("seed", job.seed, "seed of every random choice");
    r.read("threads", job.threads, "LibTorch threads (0: all cores)",
           ConfigReader::in_range(0, 1024));
    r.read("output_dir", job.output_dir, "run directory (default runs/<name>/<timestamp>)");
    if (job.output_dir.size() > 1024) {
        r.fail("output_dir",
               fmt::format("is {} characters long; at most 1024", job.output_dir.size()));
    }
    r.section("model", "model to train or compress",
              [&](ConfigReader& s) { parse_model(s, job.model); });
    r.section("data", "data set and loading", [&](ConfigReader& s) { parse_data(s, job.data); });
    r.section("train", "training recipe", [&](ConfigReader& s) { parse_train(s, job.train); });
    r.section("distillation", "knowledge distillation loss",
              [&](ConfigReader& s) { parse_distillation(s, job.distillation); });
    r.section("export", "exported files", [&](ConfigReader& s) {
        s.read("onnx", job.export_.onnx, "write model.onnx into the run directory");
        s.read("opset", job.export_.opset, "ONNX opset", ConfigReader::in_range(11, 17));
        s.read("dynamic_batch", job.export_.dynamic_batch, "symbolic batch dimension");
    });
    YAML::Node pipeline = r.raw("pipeline", "ordered learner stages");
    YAML::Node resolved_pipeline(YAML::NodeType::Sequence);
    if (!pipeline.IsDefined() || pipeline.IsNull()) {
        YAML::Node stage(YAML::NodeType::Map);
        stage["learner"] = "full_precision";
        pipeline.reset(YAML::Node(YAML::NodeType::Sequence));
        pipeline.push_back(stage);
    }
    if (!pipeline.IsSequence() || pipeline.size() == 0) {
        r.fail("pipeline", "expected a non-empty list of stages, e.g. [{learner: full_precision}]");
    }
    for (size_t i = 0; i < pipeline.size(); ++i) {
        StageConfig stage;
        stage.path = fmt::format("pipeline[{}]", i);
        stage.options = pipeline[i];
        ConfigReader sr(stage.options, stage.path, job.source);
        if (!stage.options.IsMap() || !sr.has("learner")) {
            sr.fail("", "each stage needs `learner: <name>`");
        }
        if (!stage.options["learner"].IsScalar()) {
            sr.fail("learner", "expected a learner's name (pocketflow learners lists them)");
        }
        stage.learner = stage.options["learner"].Scalar();
        resolved_pipeline.push_back(stage.options);
        job.pipeline.push_back(std::move(stage));
    }
    r.finish();
    job.resolved = r.resolved();
    job.resolved["pipeline"] = resolved_pipeline;
    return job;
}

}  // namespace

namespace {

/// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
bool valid_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        int extra = 0;
        uint32_t cp = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + static_cast<size_t>(extra) >= s.size()) {
            return false;
        }
        for (int k = 1; k <= extra; ++k) {
            const auto b = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
            if ((b & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (b & 0x3F);
        }
        static const uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
        if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return false;
        }
        i += static_cast<size_t>(extra) + 1;
    }
    return true;
}

/// Duplicate keys and invalid UTF-8 anywhere in the tree (yaml-cpp accepts both silently).
void check_yaml_tree(const YAML::Node& n, const std::string& file, const std::string& path) {
    auto at = [&](const YAML::Node& x) {
        return fmt::format("{}:{}:{}", file, x.Mark().line + 1, x.Mark().column + 1);
    };
    if (n.IsScalar()) {
        if (!valid_utf8(n.Scalar())) {
            throw ConfigError(
                fmt::format("{}: {}: the value is not valid UTF-8 text", at(n),
                            path.empty() ? std::string("(top level)") : shorten(path, 120)));
        }
    } else if (n.IsSequence()) {
        for (size_t i = 0; i < n.size(); ++i) {
            check_yaml_tree(n[i], file, fmt::format("{}[{}]", path, i));
        }
    } else if (n.IsMap()) {
        std::set<std::string> seen;
        for (const auto& kv : n) {
            if (!kv.first.IsScalar()) {
                throw ConfigError(
                    fmt::format("{}: {}: keys must be plain names", at(kv.first),
                                path.empty() ? std::string("(top level)") : shorten(path, 120)));
            }
            const std::string key = kv.first.Scalar();
            const std::string where = path.empty() ? key : path + "." + key;
            if (!valid_utf8(key)) {
                throw ConfigError(
                    fmt::format("{}: a key under {} is not valid UTF-8 text", at(kv.first),
                                path.empty() ? std::string("the top level") : shorten(path, 120)));
            }
            if (!seen.insert(key).second) {
                throw ConfigError(fmt::format("{}: duplicate key {} (each key may appear once)",
                                              at(kv.first), shorten(where, 120)));
            }
            check_yaml_tree(kv.second, file, where);
        }
    }
}

}  // namespace

YAML::Node load_yaml_document(const std::string& text,
                              const std::string& file,
                              const std::string& what) {
    // Documents are counted with a bounded loop of the event parser: yaml-cpp's LoadAll never
    // returns on some inputs (a lone ",": the parser restarts the same document forever).
    struct DocumentStarts : YAML::EventHandler {
        std::vector<YAML::Mark> starts;
        void OnDocumentStart(const YAML::Mark& m) override { starts.push_back(m); }
        void OnDocumentEnd() override {}
        void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
        // An alias can make a node contain itself (`a: &x [*x]`: yaml-cpp registers the anchor
        // before its children) or grow exponentially; no job needs one.
        void OnAlias(const YAML::Mark& m, YAML::anchor_t) override {
            throw ConfigError(
                fmt::format("{}:{}:{}: YAML aliases (*name) are not supported in "
                            "a {}; write the value out",
                            file, m.line + 1, m.column + 1, what));
        }
        std::string file, what;
        void OnScalar(const YAML::Mark&,
                      const std::string&,
                      YAML::anchor_t,
                      const std::string&) override {}
        void OnSequenceStart(const YAML::Mark&,
                             const std::string&,
                             YAML::anchor_t,
                             YAML::EmitterStyle::value) override {}
        void OnSequenceEnd() override {}
        void OnMapStart(const YAML::Mark&,
                        const std::string&,
                        YAML::anchor_t,
                        YAML::EmitterStyle::value) override {}
        void OnMapEnd() override {}
    } documents;
    documents.file = file;
    documents.what = what;
    YAML::Node root;
    try {
        std::stringstream in(text);
        YAML::Parser parser(in);
        for (int i = 0; i < 2 && parser.HandleNextDocument(documents); ++i) {
        }
        if (documents.starts.size() >= 2) {
            const YAML::Mark& second = documents.starts[1];
            if (second.pos == documents.starts[0].pos) {
                throw ConfigError(fmt::format(
                    "{}:{}:{}: failed to parse YAML: no document can start here (a stray ',' "
                    "or similar)",
                    file, second.line + 1, second.column + 1));
            }
            throw ConfigError(fmt::format(
                "{}:{}: a {} holds one YAML document; another starts here (after --- or ...)", file,
                second.line + 1, what));
        }
        root = YAML::Load(text);
    } catch (const YAML::Exception& e) {
        throw ConfigError(fmt::format("{}:{}:{}: failed to parse YAML: {}", file, e.mark.line + 1,
                                      e.mark.column + 1, e.msg));
    }
    check_yaml_tree(root, file, "");
    return root;
}

Job parse_job(const std::string& yaml_text,
              const std::string& file,
              const std::vector<std::string>& overrides) {
    YAML::Node root = load_yaml_document(yaml_text, file, "job file");
    if (root && !root.IsNull() && !root.IsMap()) {
        throw ConfigError(
            fmt::format("{}: failed to read job: expected a mapping at the top level", file));
    }
    ConfigReader::Source source{file, {}};
    apply_overrides(root, overrides, source);
    try {
        return parse_tree(root, source);
    } catch (const YAML::Exception& e) {  // a conversion outside ConfigReader's checks
        throw ConfigError(
            fmt::format("{}:{}:{}: {}", file, e.mark.line + 1, e.mark.column + 1, e.msg));
    }
}

Job load_job(const std::string& path, const std::vector<std::string>& overrides) {
    PF_CHECK(fs::is_regular_file(path), InputError, "failed to read job {}: {}", path,
             fs::exists(path) ? "not a regular file" : "no such file");
    return parse_job(read_file(path), path, overrides);
}

Job default_job(const std::vector<std::string>& overrides) {
    // LeNet-5 unless the overrides name a model themselves.
    bool names_model = std::any_of(overrides.begin(), overrides.end(), [](const std::string& o) {
        return o.rfind("model.arch=", 0) == 0 || o.rfind("model.path=", 0) == 0 ||
               o.rfind("model.onnx=", 0) == 0;
    });
    return parse_job(names_model ? "{}\n" : "model: {arch: lenet5}\n", "<defaults>", overrides);
}

std::string resolved_config_text(const Job& job) {
    YAML::Emitter out;
    out << job.resolved;
    return std::string(out.c_str()) + "\n";
}

bool same_job(const std::string& resolved_a, const std::string& resolved_b) {
    auto canonical = [](const std::string& text) -> std::optional<std::string> {
        try {
            YAML::Node node = YAML::Load(text);
            if (node.IsMap()) {
                node.remove("threads");
            }
            YAML::Emitter out;
            out << node;
            return std::string(out.c_str());
        } catch (const YAML::Exception&) {
            return std::nullopt;
        }
    };
    const auto a = canonical(resolved_a), b = canonical(resolved_b);
    return a && b && *a == *b;
}

PerLayerSetting read_per_layer(ConfigReader& r,
                               const std::string& key,
                               const std::string& doc,
                               const ConfigReader::Check& check,
                               bool allow_auto) {
    PerLayerSetting s;
    s.path = r.key_path(key);
    s.where = r.location(key);
    const bool present = r.has(key);
    YAML::Node node = r.raw(key, doc);
    if (!present || !node.IsDefined() || node.IsNull()) {
        return s;
    }
    s.given = true;
    const std::string forms =
        fmt::format("expected a number, {{default: v, \"glob\": v}}, a list (one per layer){}",
                    allow_auto ? " or auto" : "");
    auto number = [&](const YAML::Node& v, const std::string& path) {
        double x = 0;
        bool ok = v.IsScalar();
        if (ok) {
            try {
                x = v.as<double>();
            } catch (const YAML::Exception&) {
                ok = false;
            }
        }
        const std::string broken = ok && std::isfinite(x) ? (check ? check(x) : "") : forms;
        if (!broken.empty()) {
            throw ConfigError(
                fmt::format("{}: failed to read {}{}: {}", r.location_of(v), path,
                            v.IsScalar() ? " with '" + shorten(v.Scalar(), 80) + "'" : "", broken));
        }
        return x;
    };
    if (node.IsScalar() && node.Scalar() == "auto") {
        if (!allow_auto) {
            r.fail(key, forms);
        }
        s.is_auto = true;
    } else if (node.IsScalar()) {
        s.value = number(node, s.path);
        s.has_value = true;
    } else if (node.IsSequence()) {
        for (size_t i = 0; i < node.size(); ++i) {
            s.list.push_back(number(node[i], fmt::format("{}[{}]", s.path, i)));
        }
        if (s.list.empty()) {
            r.fail(key, "the list is empty");
        }
    } else if (node.IsMap()) {
        for (const auto& kv : node) {
            const std::string k = kv.first.as<std::string>();
            const double v = number(kv.second, s.path + "." + k);
            if (k == "default") {
                s.value = v;
                s.has_value = true;
            } else {
                s.rules.push_back({k, v, r.location_of(kv.first)});
            }
        }
    } else {
        r.fail(key, forms);
    }
    return s;
}

std::vector<std::optional<double>> resolve_per_layer(const PerLayerSetting& s,
                                                     const std::vector<std::string>& layers) {
    std::vector<std::optional<double>> out(layers.size());
    if (!s.list.empty()) {
        PF_CHECK(s.list.size() == layers.size(), ConfigError,
                 "{}: failed to read {}: the list has {} values for {} layers ({})", s.where,
                 s.path, s.list.size(), layers.size(), join(layers, ", "));
        for (size_t i = 0; i < layers.size(); ++i) {
            out[i] = s.list[i];
        }
    }
    for (const auto& rule : s.rules) {
        bool matched = false;
        for (size_t i = 0; i < layers.size(); ++i) {
            if (fnmatch(rule.glob.c_str(), layers[i].c_str(), 0) == 0) {
                out[i] = rule.value;
                matched = true;
            }
        }
        PF_CHECK(matched, ConfigError,
                 "{}: failed to read {}.{}: the glob matches no layer (layers: {})", rule.where,
                 s.path, rule.glob, join(layers, ", "));
    }
    return out;
}

}  // namespace pocketflow
