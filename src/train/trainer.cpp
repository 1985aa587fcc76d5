// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <unistd.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"
#include "pocketflow/learner.h"
#include "pocketflow/sparsity.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& labels, double smoothing) {
    at::Tensor logp = at::log_softmax(logits, 1);
    at::Tensor nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1).mean();
    if (smoothing <= 0) {
        return nll;
    }
    at::Tensor uniform = -logp.mean(1).mean();
    return (1.0 - smoothing) * nll + smoothing * uniform;
}

at::Tensor distillation_loss(const at::Tensor& student_logits,
                             const at::Tensor& teacher_logits,
                             double temperature) {
    at::Tensor log_p_student = at::log_softmax(student_logits / temperature, 1);
    at::Tensor log_p_teacher = at::log_softmax(teacher_logits / temperature, 1);
    // KL(t || s) = sum t * (log t - log s), averaged over the batch; T² keeps gradient scale.
    at::Tensor kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1).mean();
    return kl * (temperature * temperature);
}

double learning_rate_at(const ScheduleConfig& s,
                        double base_lr,
                        double epoch,
                        int64_t total_epochs) {
    double total = static_cast<double>(total_epochs);
    if (s.warmup_epochs > 0 && epoch < s.warmup_epochs) {
        return base_lr * epoch / s.warmup_epochs;
    }
    if (s.name == "cosine") {
        double span = std::max(total - s.warmup_epochs, 1e-9);
        double progress = std::clamp((epoch - s.warmup_epochs) / span, 0.0, 1.0);
        return s.lr_min + (base_lr - s.lr_min) * 0.5 * (1.0 + std::cos(M_PI * progress));
    }
    if (s.name == "step") {
        return base_lr * std::pow(s.gamma, std::floor(epoch / static_cast<double>(s.step_size)));
    }
    if (s.name == "multistep") {
        int passed = 0;
        for (int64_t m : s.milestones) {
            passed += epoch >= static_cast<double>(m) ? 1 : 0;
        }
        return base_lr * std::pow(s.gamma, passed);
    }
    return base_lr;
}

EvalResult evaluate(Model& model, Loader& loader) {
    bool was_training = model.is_training();
    model.eval();
    at::NoGradGuard no_grad;
    EvalResult r;
    double loss_sum = 0, top1 = 0, top5 = 0;
    loader.start_epoch(0);
    while (auto batch = loader.next()) {
        at::Tensor logits = model.forward(batch->images);
        const int64_t n = batch->labels.size(0);
        loss_sum +=
            at::cross_entropy_loss(logits, batch->labels, {}, at::Reduction::Sum).item<double>();
        int64_t k = std::min<int64_t>(5, logits.size(1));
        at::Tensor topk = std::get<1>(logits.topk(k, 1));
        at::Tensor hits = topk.eq(batch->labels.unsqueeze(1));
        top1 += hits.narrow(1, 0, 1).sum().item<double>();
        top5 += hits.sum().item<double>();
        r.samples += n;
    }
    if (was_training) {
        model.train();
    }
    if (r.samples > 0) {
        r.loss = loss_sum / static_cast<double>(r.samples);
        r.top1 = 100.0 * top1 / static_cast<double>(r.samples);
        r.top5 = 100.0 * top5 / static_cast<double>(r.samples);
    }
    return r;
}

std::vector<std::vector<double>> time_forward(const std::vector<Model*>& models,
                                              const at::Tensor& input,
                                              int64_t warmup,
                                              int64_t repeat) {
    at::NoGradGuard no_grad;
    std::vector<std::vector<double>> times(models.size());
    for (int64_t i = 0; i < warmup + repeat; ++i) {
        for (size_t m = 0; m < models.size(); ++m) {
            const auto start = std::chrono::steady_clock::now();
            at::Tensor y = models[m]->forward(input);
            const double ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                    .count();
            if (i >= warmup) {
                times[m].push_back(ms);
            }
        }
    }
    return times;
}

namespace {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerConfig& c,
                                                        Model& model,
                                                        const std::vector<at::Tensor>& extra) {
    auto params = model.parameters();
    params.insert(params.end(), extra.begin(), extra.end());
    if (c.name == "sgd") {
        return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(c.lr)
                                                               .momentum(c.momentum)
                                                               .nesterov(c.nesterov)
                                                               .weight_decay(c.weight_decay));
    }
    if (c.name == "adam") {
        return std::make_unique<torch::optim::Adam>(
            params,
            torch::optim::AdamOptions(c.lr).betas({c.beta1, c.beta2}).weight_decay(c.weight_decay));
    }
    return std::make_unique<torch::optim::AdamW>(
        params,
        torch::optim::AdamWOptions(c.lr).betas({c.beta1, c.beta2}).weight_decay(c.weight_decay));
}

/// Where a training is: the epoch/batch to run next plus the running sums of the current epoch.
struct Position {
    int64_t epoch = 0, batch = 0, step = 0;
    double loss_sum = 0, correct = 0, seen = 0;
};

void save_checkpoint(const fs::path& path,
                     Model& model,
                     torch::optim::Optimizer& opt,
                     const Position& pos) {
    torch::serialize::OutputArchive archive, model_ar, opt_ar;
    model.save(model_ar);
    opt.save(opt_ar);
    archive.write("model", model_ar);
    archive.write("optimizer", opt_ar);
    archive.write("position", at::tensor({pos.epoch, pos.batch, pos.step}, at::kLong));
    archive.write("sums", at::tensor({pos.loss_sum, pos.correct, pos.seen}, at::kDouble));
    // The position counts this run's per-worker batches: a resume with another worker count
    // would repeat or skip images and move the schedules.
    archive.write("workers", at::tensor({int64_t{dist::world_size()}}, at::kLong));
    {
        at::Generator gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        archive.write("rng", gen.get_state());
    }
    std::ostringstream out;
    archive.save_to(out);
    write_file_atomic(path, out.str());
}

/// Restores a checkpoint from its bytes (`path` names it in messages).
Position load_checkpoint(const std::string& bytes,
                         const fs::path& path,
                         Model& model,
                         torch::optim::Optimizer& opt) {
    Position pos;
    try {
        torch::serialize::InputArchive archive, model_ar, opt_ar;
        std::istringstream in(bytes);
        archive.load_from(in);
        at::Tensor workers;
        if (archive.try_read("workers", workers)) {  // (checkpoints before it: not checked)
            const int64_t saved = workers[0].item<int64_t>();
            PF_CHECK(saved == dist::world_size(), ConfigError,
                     "failed to resume from checkpoint {}: it was written by {} worker(s), this "
                     "run has {}; resume with the same count (--nproc {})",
                     path.string(), saved, dist::world_size(), saved);
        }
        archive.read("model", model_ar);
        archive.read("optimizer", opt_ar);
        model.load(model_ar);
        opt.load(opt_ar);
        at::Tensor p, s, rng;
        archive.read("position", p);
        archive.read("sums", s);
        archive.read("rng", rng);
        pos.epoch = p[0].item<int64_t>();
        pos.batch = p[1].item<int64_t>();
        pos.step = p[2].item<int64_t>();
        pos.loss_sum = s[0].item<double>();
        pos.correct = s[1].item<double>();
        pos.seen = s[2].item<double>();
        at::Generator gen = at::detail::getDefaultCPUGenerator();
        std::lock_guard<std::mutex> lock(gen.mutex());
        gen.set_state(rng);
    } catch (const c10::Error& e) {
        throw InputError(fmt::format("failed to resume from checkpoint {}: {}", path.string(),
                                     e.what_without_backtrace()));
    }
    return pos;
}

constexpr int64_t kWarmupSteps = 5;

}  // namespace

double lr_scale_for(const TrainConfig& config, int64_t batch_size, int world_size) {
    const double reference =
        static_cast<double>(config.reference_batch > 0 ? config.reference_batch : batch_size);
    const double ratio = static_cast<double>(batch_size * world_size) / reference;
    if (config.lr_scaling == "linear") {
        return ratio;
    }
    if (config.lr_scaling == "sqrt") {
        return std::sqrt(ratio);
    }
    return 1.0;
}

namespace {

std::string format_eta(double seconds) {
    auto s = static_cast<int64_t>(seconds);
    return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60)
                     : fmt::format("{}m{:02}s", s / 60, s % 60);
}

}  // namespace

Trainer::Trainer(TrainConfig config, RunDir* run, std::string tag)
    : config_(std::move(config)), run_(run), tag_(std::move(tag)) {}

void Trainer::add_feature_loss(std::vector<int> capture,
                               FeatureLoss loss,
                               std::vector<at::Tensor> params) {
    for (int node : capture) {
        if (std::find(capture_.begin(), capture_.end(), node) == capture_.end()) {
            capture_.push_back(node);
        }
    }
    feature_losses_.emplace_back(std::move(capture), std::move(loss));
    extra_params_.insert(extra_params_.end(), params.begin(), params.end());
}

void Trainer::set_teacher(std::shared_ptr<Model> teacher, const DistillationConfig& config) {
    teacher_ = std::move(teacher);
    distillation_ = config;
    if (teacher_) {
        teacher_->eval();
        for (auto& p : teacher_->parameters()) {
            p.set_requires_grad(false);
        }
    }
}

void reestimate_bn(Model& model, Loader& bn) {
    at::NoGradGuard no_grad;
    std::vector<Node*> bns, dropouts;
    for (auto& n : model.graph().nodes()) {
        if (n.op == Op::kBatchNorm2d) {
            bns.push_back(&n);
        } else if (n.op == Op::kDropout) {
            dropouts.push_back(&n);
        }
    }
    if (bns.empty() || bn.num_samples() == 0) {
        return;
    }
    std::vector<double> p, momentum;
    for (auto* n : bns) {
        n->buffers.at("running_mean").zero_();
        n->buffers.at("running_var").fill_(1);
        momentum.push_back(n->attrs.momentum);
    }
    for (auto* n : dropouts) {
        p.push_back(n->attrs.p);
        n->attrs.p = 0;
    }
    model.train();
    int64_t k = 0;
    bn.start_epoch(0);
    while (auto batch = bn.next()) {
        for (auto* n : bns) {
            n->attrs.momentum = 1.0 / static_cast<double>(k + 1);  // cumulative average
        }
        model.forward(batch->images);
        ++k;
    }
    for (size_t i = 0; i < bns.size(); ++i) {
        bns[i]->attrs.momentum = momentum[i];
    }
    for (size_t i = 0; i < dropouts.size(); ++i) {
        dropouts[i]->attrs.p = p[i];
    }
    model.eval();
}

TrainResult Trainer::fit(Model& model,
                         const DataBundle& data,
                         const DataConfig& data_config,
                         uint64_t seed) {
    TrainResult result;
    auto loader = data.train_loader(data_config, seed, dist::rank(), dist::world_size());
    std::unique_ptr<Loader> val_loader;
    if (!data.val_indices.empty()) {
        val_loader = data.val_loader(data_config);
    }
    int64_t per_epoch = loader->num_batches();
    if (config_.steps_per_epoch > 0) {
        per_epoch = std::min(per_epoch, config_.steps_per_epoch);
    }
    PF_CHECK(per_epoch > 0, ConfigError,
             "failed to train: no full batch of {} in {} training images", data_config.batch_size,
             loader->num_samples());
    const int64_t total_steps = per_epoch * config_.epochs;
    auto optimizer = make_optimizer(config_.optimizer, model, extra_params_);
    Position pos;
    const fs::path ckpt = run_ ? run_->checkpoint(tag_) : fs::path();
    // Data-parallel: rank 0's checkpoint (its run directory) is every worker's; with none, rank
    // 0's weights are.
    const bool parallel = dist::active();
    const bool writer = dist::is_main();
    const std::string resumed = dist::broadcast_bytes(
        writer && resume_ && run_ && fs::exists(ckpt) ? read_file(ckpt) : std::string());
    if (!resumed.empty()) {
        pos = load_checkpoint(resumed, ckpt, model, *optimizer);
        spdlog::info("[{}] resumed from {} at epoch {} step {}", tag_, ckpt.string(), pos.epoch + 1,
                     pos.step);
    } else if (parallel) {
        dist::broadcast_weights(model);
        dist::broadcast(extra_params_);
    }
    const double lr_scale = lr_scale_for(config_, data_config.batch_size, dist::world_size());
    struct SyncBatchNorm {  // for this training only
        explicit SyncBatchNorm(bool on) { dist::set_sync_batch_norm(on); }
        ~SyncBatchNorm() { dist::set_sync_batch_norm(false); }
    } sync_bn(config_.sync_bn);
    if (parallel) {
        spdlog::info("[{}] {} workers x batch {} = global batch {}; lr x {:.3g} ({} rule){}", tag_,
                     dist::world_size(), data_config.batch_size,
                     data_config.batch_size * dist::world_size(), lr_scale, config_.lr_scaling,
                     config_.sync_bn ? "; BatchNorm synchronised" : "");
    }
    // What the workers' gradients are averaged for: the trained tensors (frozen ones keep no
    // gradient, so the optimizer leaves them alone).
    std::vector<at::Tensor> trained;
    for (const auto& p : model.parameters()) {
        if (p.requires_grad()) {
            trained.push_back(p);
        }
    }
    for (const auto& p : extra_params_) {
        if (p.requires_grad()) {
            trained.push_back(p);
        }
    }
    // The moving activation ranges of a quantized graph (QAT), shared by the workers each step.
    std::vector<at::Tensor> act_ranges;
    for (auto& n : model.graph().nodes()) {
        auto r = n.buffers.find("act_range");
        if (r != n.buffers.end() && n.quant.act_bits > 0) {
            act_ranges.push_back(r->second);
        }
    }
    const bool tty = ::isatty(STDERR_FILENO) == 1;
    model.train();
    auto save = [&]() {
        if (run_ && writer) {
            save_checkpoint(ckpt, model, *optimizer, pos);
        }
    };
    double train_seconds = 0;
    int64_t train_images = 0, steps_this_process = 0;
    auto fit_start = Clock::now();
    for (; pos.epoch < config_.epochs; ++pos.epoch) {
        loader->start_epoch(pos.epoch, pos.batch);
        auto window_start = Clock::now();
        int64_t window_images = 0;
        while (pos.batch < per_epoch) {
            auto step_start = Clock::now();
            auto batch = loader->next();
            if (!batch) {
                break;
            }
            double lr = learning_rate_at(
                config_.schedule, config_.optimizer.lr * lr_scale,
                static_cast<double>(pos.epoch) +
                    static_cast<double>(pos.batch) / static_cast<double>(per_epoch),
                config_.epochs);
            for (auto& group : optimizer->param_groups()) {
                group.options().set_lr(lr);
            }
            optimizer->zero_grad();
            std::vector<at::Tensor> features;
            at::Tensor logits = capture_.empty()
                                    ? model.forward(batch->images)
                                    : model.forward_capture(batch->images, capture_, features);
            at::Tensor loss = cross_entropy(logits, batch->labels, config_.label_smoothing);
            if (teacher_ && distillation_.enabled) {
                at::Tensor teacher_logits;
                {
                    at::NoGradGuard no_grad;
                    teacher_logits = teacher_->forward(batch->images);
                }
                loss = (1.0 - distillation_.weight) * loss +
                       distillation_.weight *
                           distillation_loss(logits, teacher_logits, distillation_.temperature);
            }
            for (const auto& term : loss_terms_) {
                loss = loss + term(batch->images, logits, batch->labels);
            }
            for (const auto& [nodes, term] : feature_losses_) {
                std::vector<at::Tensor> mine;
                for (int node : nodes) {
                    auto at_node = std::find(capture_.begin(), capture_.end(), node);
                    mine.push_back(features[static_cast<size_t>(at_node - capture_.begin())]);
                }
                loss = loss + term(mine, batch->labels);
            }
            double loss_value = loss.item<double>();
            int64_t n = batch->labels.size(0);
            double correct = logits.detach().argmax(1).eq(batch->labels).sum().item<double>();
            bool stop = stop_requested() ||
                        (stop_after_steps_ > 0 && steps_this_process + 1 >= stop_after_steps_);
            if (parallel) {
                // Gradients averaged over the workers, with what they must agree on riding along:
                // a stop request, a non-finite loss, the batch's loss, hits and images.
                loss.backward();
                for (auto& p : trained) {
                    if (!p.grad().defined()) {
                        p.mutable_grad() = at::zeros_like(p);
                    }
                }
                at::Tensor control = at::tensor(
                    {stop ? 1.0 : 0.0, std::isfinite(loss_value) ? 0.0 : 1.0,
                     std::isfinite(loss_value) ? loss_value * static_cast<double>(n) : 0.0, correct,
                     static_cast<double>(n)},
                    at::kFloat);  // in the gradients' bucket: one all-reduce a step
                std::vector<at::Tensor> reduced;
                for (auto& p : trained) {
                    reduced.push_back(p.grad());
                }
                reduced.push_back(control);
                dist::all_reduce_sum(reduced);
                reduced.pop_back();
                for (auto& g : reduced) {
                    g.div_(static_cast<double>(dist::world_size()));
                }
                stop = control[0].item<double>() > 0;
                n = static_cast<int64_t>(control[4].item<double>());
                correct = control[3].item<double>();
                loss_value = control[1].item<double>() > 0
                                 ? std::nan("")
                                 : control[2].item<double>() / static_cast<double>(n);
            }
            if (!std::isfinite(loss_value)) {
                throw NumericError(fmt::format(
                    "[{}] loss became {} at epoch {} step {} (lr {:.4g}); stopped without "
                    "overwriting "
                    "the last good checkpoint{}. Lower train.optimizer.lr or set train.grad_clip",
                    tag_, loss_value, pos.epoch + 1, pos.step, lr,
                    run_ && fs::exists(ckpt) ? " " + ckpt.string() : ""));
            }
            if (!parallel) {
                loss.backward();
            }
            if (config_.grad_clip > 0) {
                // Over every tensor the optimizer steps (DCP's auxiliary heads too): the norm is
                // global.
                torch::nn::utils::clip_grad_norm_(trained, config_.grad_clip);
            }
            optimizer->step();
            // Masked weights stay zero, codebook weights stay decoded (sparsity.h).
            apply_weight_constraints(model.graph());
            if (parallel && !act_ranges.empty()) {
                // QAT's activation ranges follow each worker's batches and set the next
                // forward's fake quantization: the workers share their mean, so they quantize
                // alike (and a checkpoint holds every worker's ranges).
                at::NoGradGuard no_grad;
                dist::all_reduce_sum(act_ranges);
                for (auto& r : act_ranges) {
                    r.div_(static_cast<double>(dist::world_size()));
                }
            }
            for (const auto& hook : after_step_) {
                hook(model, pos.step);
            }
            pos.loss_sum += loss_value * static_cast<double>(n);
            pos.correct += correct;
            pos.seen += static_cast<double>(n);
            ++pos.batch;
            ++pos.step;
            ++steps_this_process;
            window_images += n;
            // Throughput leaves out this process's first steps, where oneDNN builds its kernels.
            if (steps_this_process > kWarmupSteps ||
                per_epoch * config_.epochs <= 2 * kWarmupSteps) {
                train_images += n;
                train_seconds += std::chrono::duration<double>(Clock::now() - step_start).count();
            }

            const bool log_now = pos.step % config_.log_every == 0 || pos.batch == per_epoch;
            if (log_now || tty) {
                double window = std::chrono::duration<double>(Clock::now() - window_start).count();
                double ips = window > 0 ? static_cast<double>(window_images) / window : 0;
                double eta =
                    ips > 0
                        ? static_cast<double>(total_steps - pos.step) *
                              static_cast<double>(data_config.batch_size * dist::world_size()) / ips
                        : 0;
                std::string line = fmt::format(
                    "[{}] epoch {}/{} step {}/{} loss {:.4f} acc {:.2f}% lr {:.4g} {:.0f} img/s "
                    "ETA {}",
                    tag_, pos.epoch + 1, config_.epochs, pos.batch, per_epoch,
                    pos.loss_sum / pos.seen, 100.0 * pos.correct / pos.seen, lr, ips,
                    format_eta(eta));
                if (tty) {
                    fmt::print(stderr, "\r\033[K{}", line);
                    if (pos.batch == per_epoch) {
                        fmt::print(stderr, "\n");
                    }
                } else if (log_now) {
                    spdlog::info("{}", line);
                }
                if (log_now && run_) {
                    run_->log_metrics({{"stage", tag_},
                                       {"kind", "step"},
                                       {"epoch", pos.epoch + 1},
                                       {"step", pos.step},
                                       {"lr", lr},
                                       {"loss", pos.loss_sum / pos.seen},
                                       {"top1", 100.0 * pos.correct / pos.seen},
                                       {"images_per_s", ips}});
                }
                if (log_now) {
                    window_start = Clock::now();
                    window_images = 0;
                }
            }
            // One process looks again now (a signal during the step counts); workers stop at the
            // step they agreed on.
            const bool interrupted =
                parallel ? stop
                         : stop_requested() ||
                               (stop_after_steps_ > 0 && steps_this_process >= stop_after_steps_);
            if (interrupted ||
                (config_.checkpoint_every > 0 && pos.step % config_.checkpoint_every == 0)) {
                save();
            }
            if (interrupted) {
                if (tty) {
                    fmt::print(stderr, "\n");
                }
                throw Interrupted(
                    fmt::format("[{}] interrupted at epoch {} step {}; checkpoint saved{}; "
                                "continue with --resume",
                                tag_, pos.epoch + 1, pos.step,
                                !run_    ? ""
                                : writer ? " to " + ckpt.string()
                                         : " by rank 0"));
            }
        }
        // Each worker's BatchNorm saw its own shard: rank 0's statistics are everyone's (as
        // DistributedDataParallel's broadcast_buffers), before evaluation and the checkpoint.
        dist::broadcast_weights(model);
        result.train_loss = pos.seen > 0 ? pos.loss_sum / pos.seen : 0;
        result.train_top1 = pos.seen > 0 ? 100.0 * pos.correct / pos.seen : 0;
        nlohmann::json row = {{"stage", tag_},
                              {"kind", "epoch"},
                              {"epoch", pos.epoch + 1},
                              {"train_loss", result.train_loss},
                              {"train_top1", result.train_top1}};
        if (val_loader) {
            result.val = evaluate(model, *val_loader);
            row["val_loss"] = result.val.loss;
            row["val_top1"] = result.val.top1;
            spdlog::info(
                "[{}] epoch {}/{}: train loss {:.4f} acc {:.2f}% | val loss {:.4f} top-1 {:.2f}%",
                tag_, pos.epoch + 1, config_.epochs, result.train_loss, result.train_top1,
                result.val.loss, result.val.top1);
        } else {
            spdlog::info("[{}] epoch {}/{}: train loss {:.4f} acc {:.2f}%", tag_, pos.epoch + 1,
                         config_.epochs, result.train_loss, result.train_top1);
        }
        if (run_) {
            run_->log_metrics(row);
        }
        pos.batch = 0;
        pos.loss_sum = pos.correct = pos.seen = 0;
        // The position saved is the start of the next epoch.
        ++pos.epoch;
        save();
        --pos.epoch;
    }
    result.steps = pos.step;
    result.seconds = std::chrono::duration<double>(Clock::now() - fit_start).count();
    result.images_per_second =
        train_seconds > 0 ? static_cast<double>(train_images) / train_seconds : 0;
    return result;
}

}  // namespace pocketflow
