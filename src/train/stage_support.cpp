// SPDX-License-Identifier: Apache-2.0
// What the job runner and the learners share (declared in learner.h): threads and BLAS, the model,
// the distillation teacher, trainers, calibration and search-validation loaders, the stage search
// helpers, BatchNorm restoration and short fine-tuning recipes. The job runner: pipeline.cpp.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <random>

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <spdlog/spdlog.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/onnx.h"
#include "pocketflow/pfm.h"
#include "pocketflow/quant.h"
#include "pocketflow/util.h"
#include "pocketflow/zoo.h"

namespace pocketflow {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// OpenBLAS's thread count, when OpenBLAS is LibTorch's BLAS (found at run time).
void set_blas_threads(int n) {
    using SetThreads = void (*)(int);
    static auto* set =
        reinterpret_cast<SetThreads>(::dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (set != nullptr) {
        set(n);
    }
}

}  // namespace

int configure_threads(int64_t requested) {
    // `threads: 0` is every core of the machine, shared by the workers on it.
    int n = requested > 0 ? static_cast<int>(requested)
                          : std::max(1, resolve_threads(0) / dist::local_world_size());
    at::set_num_threads(n);
    // OpenBLAS (when it is LibTorch's BLAS) keeps a thread pool of its own, beside OpenMP's, whose
    // threads spin after each call: with both at n threads on n cores, the OpenMP threads of the
    // next convolution wait for the scheduler. Measured at batch 1 (bench, 2 cores): pruned
    // torchvision models ran at 4 ms scheduler-tick multiples (ResNet-18 at 50% MACs 7.96 ms
    // instead of 4.3 ms) in some runs. OpenBLAS gets one thread: the convolutions run on oneDNN
    // and OpenMP, ResNet-20 training speed is the same (1,650 images/s either way), and the large
    // products (LASSO's) take the threads back for their scope (ScopedBlasThreads). Linear
    // layers train on one BLAS thread: a cost for models with large fully-connected layers.
    set_blas_threads(1);
    return n;
}

ScopedBlasThreads::ScopedBlasThreads() {
    set_blas_threads(at::get_num_threads());
}

ScopedBlasThreads::~ScopedBlasThreads() {
    set_blas_threads(1);
}

void configure_allocator() {
    // Blocks up to 256 MiB come from the heap, and up to 1 GiB of free heap is kept for reuse.
    ::mallopt(M_MMAP_THRESHOLD, 256 << 20);
    ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

void check_blas() {
    static std::once_flag once;
    std::call_once(once, [] {
        std::string found;
        dl_iterate_phdr(
            [](dl_phdr_info* info, size_t, void* data) {
                std::string name = info->dlpi_name ? info->dlpi_name : "";
                if (name.find("blas") != std::string::npos ||
                    name.find("mkl") != std::string::npos) {
                    std::error_code ec;
                    auto real = fs::canonical(name, ec);
                    *static_cast<std::string*>(data) += (ec ? name : real.string()) + ";";
                }
                return 0;
            },
            &found);
        bool fast = found.find("openblas") != std::string::npos ||
                    found.find("mkl") != std::string::npos ||
                    found.find("blis") != std::string::npos;
        if (!fast) {
            spdlog::warn(
                "LibTorch is not using OpenBLAS (BLAS libraries loaded: {}); matrix products may "
                "be ~25x slower. Install libopenblas0-pthread (tools/setup.sh does).",
                found.empty() ? "none found" : found);
        }
    });
}

std::shared_ptr<Model> make_model(const Job& job,
                                  const std::vector<int64_t>& input_shape,
                                  int64_t num_classes,
                                  const std::vector<double>& mean,
                                  const std::vector<double>& std) {
    const ModelConfig& m = job.model;
    ModelMeta meta{m.arch, job.data.dataset, mean, std};
    std::vector<int64_t> shape = input_shape;
    if (m.in_channels > 0) {
        shape[0] = m.in_channels;
    }
    int64_t classes = m.num_classes > 0 ? m.num_classes : num_classes;
    PF_CHECK(shape == input_shape, ConfigError,
             "{}: failed to build the model with model.in_channels {}: the data has {} channels",
             job.source.file, m.in_channels, input_shape[0]);
    PF_CHECK(classes >= num_classes, ConfigError,
             "{}: failed to build the model with model.num_classes {}: the data has {} classes",
             job.source.file, classes, num_classes);
    if (!m.path.empty() || !m.onnx.empty()) {
        const std::string& source = m.path.empty() ? m.onnx : m.path;
        ModelFile file = m.path.empty() ? import_onnx(m.onnx, {m.input}) : load_model(m.path);
        PF_CHECK(file.graph.input_shape() == input_shape, ConfigError,
                 "failed to use model {}: it takes input [{}], the data gives [{}]", source,
                 fmt::join(file.graph.input_shape(), ", "), fmt::join(input_shape, ", "));
        PF_CHECK(file.graph.num_classes() >= num_classes, ConfigError,
                 "failed to use model {}: it has {} outputs, the data has {} classes", source,
                 file.graph.num_classes(), num_classes);
        file.meta.dataset = job.data.dataset;
        file.meta.mean = mean;
        file.meta.std = std;
        return std::make_shared<Model>(std::move(file.graph), file.meta);
    }
    Graph g = build_zoo_model(m.arch, classes, shape, job.seed);
    if (!m.init.empty()) {
        ModelFile init = load_model(m.init);
        const auto& a = g.nodes();
        const auto& b = init.graph.nodes();
        bool same = a.size() == b.size();
        for (size_t i = 0; same && i < a.size(); ++i) {
            same = a[i].name == b[i].name && a[i].op == b[i].op &&
                   a[i].params.size() == b[i].params.size() &&
                   a[i].buffers.size() == b[i].buffers.size();
            for (const auto& [key, t] : a[i].params) {
                same = same && b[i].params.count(key) && b[i].params.at(key).sizes() == t.sizes();
            }
        }
        PF_CHECK(same, ConfigError,
                 "failed to initialise {} from {}: the file holds a different graph "
                 "(use model.path to start from a model with its own graph)",
                 m.arch, m.init);
        g = std::move(init.graph);
    }
    return std::make_shared<Model>(std::move(g), meta);
}

std::shared_ptr<Model> make_teacher(const RunContext& ctx) {
    const DistillationConfig& d = ctx.job.distillation;
    if (!d.enabled) {
        return nullptr;
    }
    std::shared_ptr<Model> teacher;
    if (!d.teacher.empty()) {
        ModelFile file = load_model(d.teacher);
        PF_CHECK(file.graph.input_shape() == ctx.model->graph().input_shape() &&
                     file.graph.num_classes() == ctx.model->graph().num_classes(),
                 ConfigError,
                 "failed to use teacher {}: its input/classes differ from the student's",
                 d.teacher);
        teacher = std::make_shared<Model>(std::move(file.graph), file.meta);
    } else {
        const Model& source = ctx.input_model ? *ctx.input_model : *ctx.model;
        teacher = std::make_shared<Model>(source.graph().clone(), source.meta());
    }
    teacher->eval();
    return teacher;
}

Trainer make_trainer(RunContext& ctx,
                     const TrainConfig& config,
                     const std::string& suffix,
                     bool input_teacher) {
    Trainer trainer(config, &ctx.run,
                    fmt::format("stage{}_{}{}", ctx.stage_index, ctx.stage.learner, suffix));
    trainer.set_resume(ctx.resume);
    trainer.set_stop_after_steps(ctx.stop_after_steps);
    if (input_teacher || !ctx.job.distillation.teacher.empty()) {
        if (auto teacher = make_teacher(ctx)) {
            trainer.set_teacher(teacher, ctx.job.distillation);
        }
    }
    return trainer;
}

std::unique_ptr<Loader> calibration_loader(
    const DataBundle& data, const Job& job, int64_t count, uint64_t salt, int64_t batch_size) {
    std::vector<int64_t> subset = data.train_indices;
    std::shuffle(subset.begin(), subset.end(), std::mt19937_64(job.seed + salt));
    subset.resize(std::min<size_t>(subset.size(), static_cast<size_t>(count)));
    std::sort(subset.begin(), subset.end());
    LoaderOptions lo;
    lo.batch_size = batch_size;
    lo.mean = data.mean;
    lo.std = data.std;
    lo.crop = job.data.dataset == "imagefolder" ? job.data.image_size : 0;
    return std::make_unique<Loader>(data.train_set, subset, lo);
}

std::unique_ptr<Loader> calibration_loader(const RunContext& ctx,
                                           int64_t count,
                                           uint64_t salt,
                                           int64_t batch_size) {
    return calibration_loader(ctx.data, ctx.job, count, salt, batch_size);
}

std::unique_ptr<Loader> search_validation_loader(const RunContext& ctx,
                                                 int64_t count,
                                                 const std::string& where,
                                                 int64_t skip) {
    PF_CHECK(!ctx.data.val_indices.empty(), ConfigError,
             "{}: the search scores candidates on the validation split (never the test set): "
             "set data.val_size (e.g. 5000)",
             where);
    std::vector<int64_t> val = ctx.data.val_indices;
    std::shuffle(val.begin(), val.end(), std::mt19937_64(ctx.job.seed + 0xA3C));
    const size_t first = std::min(val.size(), static_cast<size_t>(std::max<int64_t>(skip, 0)));
    val.erase(val.begin(), val.begin() + static_cast<std::ptrdiff_t>(first));
    val.resize(std::min<size_t>(val.size(), static_cast<size_t>(count)));
    PF_CHECK(!val.empty(), ConfigError,
             "{}: no validation images left after the first {} (data.val_size is {})", where, skip,
             ctx.data.val_indices.size());
    std::sort(val.begin(), val.end());
    LoaderOptions lo;
    lo.batch_size = ctx.job.data.eval_batch_size;
    lo.mean = ctx.data.mean;
    lo.std = ctx.data.std;
    lo.crop = ctx.job.data.dataset == "imagefolder" ? ctx.job.data.image_size : 0;
    return std::make_unique<Loader>(ctx.data.train_set, val, lo);
}

fs::path search_dir(const RunContext& ctx) {
    return ctx.run.path() / "search" / fmt::format("stage{}", ctx.stage_index);
}

SearchOptions stage_search_options(const RunContext& ctx,
                                   int64_t episodes,
                                   int64_t warmup,
                                   uint64_t salt) {
    const fs::path dir = search_dir(ctx);
    fs::create_directories(dir);
    SearchOptions so;
    so.episodes = episodes;
    so.agent.warmup = warmup;
    so.agent.seed = ctx.job.seed + salt;
    so.csv_path = (dir / "episodes.csv").string();
    so.plot_path = (dir / "episodes.svg").string();
    so.resume = ctx.resume;
    return so;
}

void read_search_keys(ConfigReader& reader,
                      int64_t& episodes,
                      int64_t& warmup,
                      int64_t& eval_images) {
    reader.read("episodes", episodes, "search episodes (including warm-up)",
                ConfigReader::in_range(1, 100000));
    reader.read("warmup", warmup, "random episodes before the agent learns",
                ConfigReader::at_least(0));
    reader.read("eval_images", eval_images, "validation images per candidate",
                ConfigReader::in_range(1, 10000000));
}

SearchResult run_stage_search(RunContext& ctx,
                              const SearchSpace& space,
                              int64_t episodes,
                              int64_t warmup,
                              uint64_t salt,
                              const std::string& what,
                              const std::vector<double>& baseline,
                              double baseline_score,
                              const std::string& baseline_name) {
    SearchOptions so = stage_search_options(ctx, episodes, warmup, salt);
    const std::string& where = ctx.stage.path;
    so.progress = [&](int64_t episode, double reward, double best) {
        if ((episode + 1) % 10 == 0 || episode + 1 == episodes) {
            spdlog::info("[{}] {} episode {}/{}: top-1 {:.2f}%, best {:.2f}% ({} {:.2f}%)", where,
                         what, episode + 1, episodes, reward, best, baseline_name, baseline_score);
        }
    };
    so.baseline = baseline;  // never hand back something worse than the baseline
    so.baseline_score = baseline_score;
    return run_search(space, so);
}

BitsSearchResult run_bits_search(RunContext& ctx,
                                 SearchSpace space,
                                 const BitsSearchSpec& spec,
                                 std::chrono::steady_clock::time_point start) {
    const std::string& where = ctx.stage.path;
    const BitsBudget& budget = spec.budget;
    budget.describe(space);
    const int uniform_bits = static_cast<int>(std::floor(budget.avg_bits));
    const std::vector<double> uniform(spec.layers.size(), static_cast<double>(uniform_bits));
    const double uniform_top1 = space.reward(uniform).reward;
    spdlog::info(
        "[{}] {}: {} layers, mean {} {} bits, {} episodes ({} warm-up); uniform {} bits: "
        "validation top-1 {:.2f}% on {} images",
        where, spec.what, spec.layers.size(), budget.avg_bits, spec.unit, spec.episodes,
        spec.warmup, uniform_bits, uniform_top1, spec.val_images);
    const SearchResult result =
        run_stage_search(ctx, space, spec.episodes, spec.warmup, spec.salt, spec.what, uniform,
                         uniform_top1, fmt::format("uniform {} bits", uniform_bits));
    const double mean = budget.mean_bits(result.best);
    BitsSearchResult out;
    nlohmann::json layers = nlohmann::json::object();
    std::string yaml = fmt::format(
        "# bits: auto found these (validation top-1 {:.2f}% before fine-tuning, uniform {} bits "
        "{:.2f}%; mean {} bits {:.3f})\nbits:\n",
        result.best_reward, uniform_bits, uniform_top1, spec.unit, mean);
    for (size_t k = 0; k < spec.layers.size(); ++k) {
        out.bits.push_back(budget.bits_of(result.best[k]));
        layers[spec.layers[k]] = out.bits.back();
        yaml += fmt::format("  \"{}\": {}\n", spec.layers[k], spec.yaml_value(out.bits.back()));
    }
    const fs::path file = search_dir(ctx) / "best_bits.yaml";  // made by the search
    write_file_atomic(file, yaml);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out.summary = {{"episodes", result.episodes},
                   {"best_val_top1", result.best_reward},
                   {"uniform_val_top1", uniform_top1},
                   {"uniform_bits", uniform_bits},
                   {"avg_bits_target", budget.avg_bits},
                   {"avg_bits", mean},
                   {spec.layers_key, layers},
                   {"val_images", spec.val_images},
                   {"seconds", seconds},
                   {"resumed_episodes", result.resumed},
                   {"chosen", result.baseline_kept ? "uniform" : "search"},
                   {"agent_best_val_top1", result.agent_best_reward}};
    spdlog::info(
        "[{}] {} done in {:.0f} s: best validation top-1 {:.2f}% (uniform {} bits "
        "{:.2f}%) at a mean of {:.3f} {} bits; {}",
        where, spec.what, seconds, result.best_reward, uniform_bits, uniform_top1, mean, spec.unit,
        file.string());
    return out;
}

void read_bits_budget(ConfigReader& s, BitsBudget& budget, const std::string& doc) {
    s.read("avg_bits", budget.avg_bits, doc, ConfigReader::in_range(2, 8));
    s.read("min_bits", budget.min_bits, "fewest bits of a layer", ConfigReader::in_range(2, 8));
    s.read("max_bits", budget.max_bits, "most bits of a layer", ConfigReader::in_range(2, 8));
    if (budget.min_bits > budget.max_bits) {
        s.fail("max_bits", fmt::format("must be at least min_bits ({})", budget.min_bits));
    }
    if (budget.avg_bits < budget.min_bits || budget.avg_bits > budget.max_bits) {
        s.fail("avg_bits", fmt::format("must lie in [min_bits {}, max_bits {}]", budget.min_bits,
                                       budget.max_bits));
    }
}

int restore_batch_norm(const Job& job, const DataBundle& data, std::shared_ptr<Model>& model) {
    const std::string& mode = job.model.restore_bn;
    if (mode == "false" || (mode == "auto" && job.model.onnx.empty())) {
        return 0;
    }
    if (is_quantized(model->graph())) {
        // Its scales describe the convs as they are; rescaling them for BatchNorm would not.
        PF_CHECK(mode != "true", ConfigError,
                 "model.restore_bn: true cannot apply to a quantized model (its scales describe "
                 "the convs as they are)");
        return 0;
    }
    const std::vector<int> convs = folded_convs(model->graph());
    // auto: only deep BN-free networks, the ones whose training diverges at a BN recipe's rates
    // (a LeNet-style network of a few biased convs trains fine as it is).
    constexpr size_t kDeep = 6;
    if (mode == "auto" && convs.size() < kDeep) {
        return 0;
    }
    if (convs.empty()) {
        if (mode == "true") {
            spdlog::info(
                "model.restore_bn: the model has BatchNorm already (or no conv with a "
                "bias); nothing to restore");
        }
        return 0;
    }
    // Per-channel mean and variance of each conv's output over calibration images (eval mode).
    auto loader = calibration_loader(data, job, 1024, 313);
    std::vector<at::Tensor> sum(convs.size()), sq(convs.size());
    std::vector<double> count(convs.size(), 0.0);  // values per channel seen
    int64_t images = 0;
    model->eval();
    {
        at::NoGradGuard no_grad;
        loader->start_epoch(0);
        while (auto batch = loader->next()) {
            std::vector<at::Tensor> out;
            model->forward_capture(batch->images, convs, out);
            for (size_t k = 0; k < convs.size(); ++k) {
                at::Tensor v = out[k].to(at::kDouble);
                at::Tensor s1 = v.sum({0, 2, 3}), s2 = v.pow(2).sum({0, 2, 3});
                sum[k] = sum[k].defined() ? sum[k] + s1 : s1;
                sq[k] = sq[k].defined() ? sq[k] + s2 : s2;
                count[k] += static_cast<double>(v.numel() / v.size(1));
            }
            images += batch->images.size(0);
        }
    }
    std::vector<at::Tensor> mean, var;
    for (size_t k = 0; k < convs.size(); ++k) {
        at::Tensor m = sum[k] / count[k];
        mean.push_back(m);
        var.push_back((sq[k] / count[k] - m * m).clamp_min(0));
    }
    Graph restored = insert_batch_norm(model->graph(), convs, mean, var);
    model = std::make_shared<Model>(std::move(restored), model->meta());
    spdlog::info(
        "model.restore_bn: re-inserted BatchNorm after {} convs of the BN-folded model (statistics "
        "of {} training images); the model computes the same function and trains like a BN "
        "network (set model.restore_bn: false to train it as it is)",
        convs.size(), images);
    return static_cast<int>(convs.size());
}

TrainConfig short_finetune(const TrainConfig& recipe, int64_t steps, double lr) {
    TrainConfig tc = recipe;
    tc.epochs = 1;
    tc.steps_per_epoch = steps;
    tc.optimizer.lr = lr;
    tc.schedule.name = "constant";
    tc.schedule.warmup_epochs = 0;
    return tc;
}

void finetune_stage(RunContext& ctx,
                    int64_t epochs,
                    double lr,
                    nlohmann::json& summary,
                    const std::function<void(Trainer&)>& setup) {
    if (epochs <= 0) {
        return;
    }
    TrainConfig tc = ctx.job.train;
    tc.epochs = epochs;
    tc.optimizer.lr = lr;
    Trainer trainer = make_trainer(ctx, tc);
    if (setup) {
        setup(trainer);
    }
    TrainResult r = trainer.fit(*ctx.model, ctx.data, ctx.job.data, ctx.job.seed + 1000);
    summary["finetune_epochs"] = tc.epochs;
    summary["images_per_second"] = r.images_per_second;
    if (r.val.samples > 0) {
        summary["val_top1"] = r.val.top1;
    }
}

int64_t steps_per_epoch(const RunContext& ctx, bool whole_set) {
    // The steps each worker takes: under data-parallel training the trainer's loader is this
    // worker's shard (inside dist::run_once, the whole set).
    auto loader = whole_set ? ctx.data.train_loader(ctx.job.data, ctx.job.seed)
                            : ctx.data.train_loader(ctx.job.data, ctx.job.seed, dist::rank(),
                                                    dist::world_size());
    int64_t steps = loader->num_batches();
    if (ctx.job.train.steps_per_epoch > 0) {
        steps = std::min(steps, ctx.job.train.steps_per_epoch);
    }
    return steps;
}

WeightLayers weight_layers(const Graph& graph) {
    WeightLayers out;
    std::vector<Op> ops;
    for (const auto& n : graph.nodes()) {
        if (n.op == Op::kConv2d || n.op == Op::kLinear) {
            out.names.push_back(n.name);
            ops.push_back(n.op);
        }
    }
    for (size_t k = 0; k < out.names.size(); ++k) {
        out.edge.push_back(k == 0 || (k + 1 == out.names.size() && ops[k] == Op::kLinear));
    }
    return out;
}

std::vector<double> weight_layer_features(const Node& n, double largest, int64_t widest) {
    const at::Tensor& w = n.params.at("weight");
    const bool conv = n.op == Op::kConv2d;
    return {conv ? 1.0 : 0.0, std::log1p(static_cast<double>(w.numel())) / std::log1p(largest),
            static_cast<double>(w.size(0)) / static_cast<double>(widest),
            conv ? static_cast<double>(n.attrs.kernel.at(0)) / 7.0 : 0.0,
            conv && n.attrs.groups > 1 ? 1.0 : 0.0};
}

}  // namespace pocketflow
