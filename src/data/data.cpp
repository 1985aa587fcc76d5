// SPDX-License-Identifier: Apache-2.0
// Datasets (IDX, CIFAR binaries, synthetic, reshaped views), the Loader (shuffling, augmentation,
// background batches) and load_data. Image files (JPEG/PNG, folders): images.cpp.
#include "pocketflow/data.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <set>

#include <ATen/ATen.h>
#include <zlib.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

#include "images.h"

namespace pocketflow {

namespace fs = std::filesystem;

namespace {

/// Reads a whole file through zlib, which passes uncompressed files through unchanged.
std::vector<uint8_t> read_maybe_gz(const std::string& path) {
    PF_CHECK(fs::is_regular_file(path), InputError, "failed to read {}: no such file", path);
    gzFile f = gzopen(path.c_str(), "rb");
    PF_CHECK(f != nullptr, InputError, "failed to read {}: cannot open", path);
    std::vector<uint8_t> out;
    std::vector<uint8_t> buf(1 << 20);
    while (true) {
        int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
        if (n < 0) {
            int err = 0;
            std::string msg = gzerror(f, &err);
            gzclose(f);
            throw InputError(fmt::format("failed to read {}: {}", path, msg));
        }
        if (n == 0) {
            break;
        }
        out.insert(out.end(), buf.begin(), buf.begin() + n);
    }
    gzclose(f);
    return out;
}

uint32_t big_endian(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

/// Dataset whose images all have one shape and live in memory as uint8 CHW.
class MemoryDataset : public Dataset {
public:
    MemoryDataset(std::vector<uint8_t> pixels,
                  std::vector<int64_t> labels,
                  std::vector<int64_t> shape,
                  int64_t classes)
        : pixels_(std::move(pixels)),
          labels_(std::move(labels)),
          shape_(std::move(shape)),
          classes_(classes),
          stride_(shape_[0] * shape_[1] * shape_[2]) {}
    int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
    Image get(int64_t i) const override {
        Image img{shape_[0], shape_[1], shape_[2], {}};
        auto begin = pixels_.begin() + i * stride_;
        img.pixels.assign(begin, begin + stride_);
        return img;
    }
    int64_t label(int64_t i) const override { return labels_[static_cast<size_t>(i)]; }
    int64_t num_classes() const override { return classes_; }
    std::vector<int64_t> shape() const override { return shape_; }

private:
    std::vector<uint8_t> pixels_;
    std::vector<int64_t> labels_;
    std::vector<int64_t> shape_;
    int64_t classes_;
    int64_t stride_;
};

class SyntheticDataset : public Dataset {
public:
    SyntheticDataset(int64_t size, int64_t classes, std::vector<int64_t> shape, uint64_t seed)
        : size_(size), classes_(classes), shape_(std::move(shape)), seed_(seed) {
        // Each class is a sinusoidal grating with its own frequency, orientation and phase per
        // channel: spatially structured like real images, so convolutions and pooling can learn it
        // quickly.
        std::mt19937_64 rng(seed);
        std::uniform_real_distribution<double> freq(0.3, 1.5), phase(0.0, 2 * M_PI),
            sign(-1.0, 1.0);
        const int64_t c = shape_[0], h = shape_[1], w = shape_[2];
        patterns_.resize(static_cast<size_t>(classes_ * c * h * w));
        for (int64_t k = 0; k < classes_; ++k) {
            for (int64_t ch = 0; ch < c; ++ch) {
                double fy = freq(rng) * (sign(rng) < 0 ? -1 : 1), fx = freq(rng), ph = phase(rng);
                for (int64_t y = 0; y < h; ++y) {
                    for (int64_t x = 0; x < w; ++x) {
                        double v = 0.5 + 0.4 * std::sin(2 * M_PI * (fy * y / h + fx * x / w) + ph);
                        patterns_[static_cast<size_t>(((k * c + ch) * h + y) * w + x)] =
                            static_cast<float>(v);
                    }
                }
            }
        }
    }
    int64_t size() const override { return size_; }
    Image get(int64_t i) const override {
        int64_t n = shape_[0] * shape_[1] * shape_[2];
        std::mt19937_64 rng(seed_ * 1000003ULL + static_cast<uint64_t>(i) + 17);
        std::normal_distribution<double> noise(0.0, 0.15);
        Image img{shape_[0], shape_[1], shape_[2], std::vector<uint8_t>(static_cast<size_t>(n))};
        const float* p = patterns_.data() + label(i) * n;
        for (int64_t k = 0; k < n; ++k) {
            double v = p[k] + noise(rng);
            img.pixels[static_cast<size_t>(k)] =
                static_cast<uint8_t>(std::clamp(v, 0.0, 1.0) * 255.0);
        }
        return img;
    }
    int64_t label(int64_t i) const override {
        return static_cast<int64_t>((static_cast<uint64_t>(i) * 2654435761ULL + seed_) %
                                    static_cast<uint64_t>(classes_));
    }
    int64_t num_classes() const override { return classes_; }
    std::vector<int64_t> shape() const override { return shape_; }

private:
    int64_t size_, classes_;
    std::vector<int64_t> shape_;
    uint64_t seed_;
    std::vector<float> patterns_;
};

uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t x = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x7F4A7C159E3779B9ULL + (a << 6) + (a >> 2));
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

}  // namespace

std::shared_ptr<Dataset> load_idx(const std::string& images_path,
                                  const std::string& labels_path,
                                  int64_t limit) {
    std::vector<uint8_t> images = read_maybe_gz(images_path);
    std::vector<uint8_t> labels = read_maybe_gz(labels_path);
    PF_CHECK(images.size() >= 16 && big_endian(images.data()) == 0x803, InputError,
             "failed to read {}: not an IDX image file (magic 0x00000803, 3 dimensions)",
             images_path);
    PF_CHECK(labels.size() >= 8 && big_endian(labels.data()) == 0x801, InputError,
             "failed to read {}: not an IDX label file (magic 0x00000801)", labels_path);
    int64_t n = big_endian(images.data() + 4), h = big_endian(images.data() + 8),
            w = big_endian(images.data() + 12);
    int64_t nl = big_endian(labels.data() + 4);
    PF_CHECK(n == nl, InputError, "failed to read {}: {} images but {} labels in {}", images_path,
             n, nl, labels_path);
    // Sizes are checked against the file before anything is computed from their product.
    PF_CHECK(h > 0 && w > 0 && h <= 65536 && w <= 65536 &&
                 n <= static_cast<int64_t>(images.size()) / std::max<int64_t>(1, h * w),
             InputError, "failed to read {}: declares {} images of {}x{} but the file has {} bytes",
             images_path, n, h, w, images.size());
    PF_CHECK(static_cast<int64_t>(images.size()) == 16 + n * h * w, InputError,
             "failed to read {}: truncated ({} bytes, expected {})", images_path, images.size(),
             16 + n * h * w);
    PF_CHECK(static_cast<int64_t>(labels.size()) == 8 + n, InputError,
             "failed to read {}: truncated ({} bytes, expected {})", labels_path, labels.size(),
             8 + n);
    if (limit > 0 && limit < n) {
        n = limit;
    }
    std::vector<uint8_t> pixels(images.begin() + 16, images.begin() + 16 + n * h * w);
    std::vector<int64_t> y(static_cast<size_t>(n));
    int64_t classes = 10;
    for (int64_t i = 0; i < n; ++i) {
        y[static_cast<size_t>(i)] = labels[static_cast<size_t>(8 + i)];
        classes = std::max(classes, y[static_cast<size_t>(i)] + 1);
    }
    return std::make_shared<MemoryDataset>(std::move(pixels), std::move(y),
                                           std::vector<int64_t>{1, h, w}, classes);
}

std::shared_ptr<Dataset> load_cifar(const std::string& root,
                                    bool cifar100,
                                    bool train,
                                    int64_t limit) {
    std::vector<std::string> files;
    if (cifar100) {
        files = {train ? "train.bin" : "test.bin"};
    } else if (train) {
        files = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                 "data_batch_5.bin"};
    } else {
        files = {"test_batch.bin"};
    }
    const int64_t record = (cifar100 ? 2 : 1) + 3072;
    std::vector<uint8_t> pixels;
    std::vector<int64_t> labels;
    for (const auto& name : files) {
        std::string path = (fs::path(root) / name).string();
        std::vector<uint8_t> bytes = read_maybe_gz(path);
        PF_CHECK(!bytes.empty() && static_cast<int64_t>(bytes.size()) % record == 0, InputError,
                 "failed to read {}: size {} is not a multiple of the {}-byte CIFAR record", path,
                 bytes.size(), record);
        for (size_t off = 0; off < bytes.size(); off += static_cast<size_t>(record)) {
            int64_t label = cifar100 ? bytes[off + 1] : bytes[off];
            PF_CHECK(label < (cifar100 ? 100 : 10), InputError,
                     "failed to read {}: label {} out of range", path, label);
            labels.push_back(label);
            size_t start = off + (cifar100 ? 2 : 1);
            pixels.insert(pixels.end(), bytes.begin() + static_cast<std::ptrdiff_t>(start),
                          bytes.begin() + static_cast<std::ptrdiff_t>(start + 3072));
            if (limit > 0 && static_cast<int64_t>(labels.size()) >= limit) {
                break;
            }
        }
        if (limit > 0 && static_cast<int64_t>(labels.size()) >= limit) {
            break;
        }
    }
    return std::make_shared<MemoryDataset>(std::move(pixels), std::move(labels),
                                           std::vector<int64_t>{3, 32, 32}, cifar100 ? 100 : 10);
}

namespace {

/// Another dataset's images resized (bilinear, PyTorch's align_corners=false sampling) and
/// converted to `shape`'s channel count.
class ReshapedDataset : public Dataset {
public:
    ReshapedDataset(std::shared_ptr<const Dataset> base, std::vector<int64_t> shape)
        : base_(std::move(base)), shape_(std::move(shape)) {}
    int64_t size() const override { return base_->size(); }
    int64_t label(int64_t index) const override { return base_->label(index); }
    int64_t num_classes() const override { return base_->num_classes(); }
    std::vector<int64_t> shape() const override { return shape_; }
    Image get(int64_t index) const override {
        const Image src = base_->get(index);
        Image out{shape_[0], shape_[1], shape_[2], {}};
        out.pixels.resize(static_cast<size_t>(out.channels * out.height * out.width));
        const double sy = static_cast<double>(src.height) / static_cast<double>(out.height);
        const double sx = static_cast<double>(src.width) / static_cast<double>(out.width);
        auto at = [&](int64_t c, int64_t y, int64_t x) {
            return static_cast<double>(
                src.pixels[static_cast<size_t>((c * src.height + y) * src.width + x)]);
        };
        for (int64_t c = 0; c < out.channels; ++c) {
            for (int64_t y = 0; y < out.height; ++y) {
                const double fy = std::max(0.0, (static_cast<double>(y) + 0.5) * sy - 0.5);
                const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(fy), src.height - 1);
                const int64_t y1 = std::min<int64_t>(y0 + 1, src.height - 1);
                const double wy = fy - static_cast<double>(y0);
                for (int64_t x = 0; x < out.width; ++x) {
                    const double fx = std::max(0.0, (static_cast<double>(x) + 0.5) * sx - 0.5);
                    const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(fx), src.width - 1);
                    const int64_t x1 = std::min<int64_t>(x0 + 1, src.width - 1);
                    const double wx = fx - static_cast<double>(x0);
                    // Grey to colour: every channel reads channel 0; colour to grey: the mean.
                    double v = 0;
                    const int64_t from = src.channels == out.channels ? c : 0;
                    const int64_t count = src.channels > out.channels ? src.channels : 1;
                    for (int64_t k = from; k < from + count; ++k) {
                        v += (1 - wy) * ((1 - wx) * at(k, y0, x0) + wx * at(k, y0, x1)) +
                             wy * ((1 - wx) * at(k, y1, x0) + wx * at(k, y1, x1));
                    }
                    out.pixels[static_cast<size_t>((c * out.height + y) * out.width + x)] =
                        static_cast<uint8_t>(std::clamp(std::lround(v / count), 0L, 255L));
                }
            }
        }
        return out;
    }

private:
    std::shared_ptr<const Dataset> base_;
    std::vector<int64_t> shape_;
};

}  // namespace

std::shared_ptr<Dataset> make_synthetic(int64_t size,
                                        int64_t num_classes,
                                        const std::vector<int64_t>& shape,
                                        uint64_t seed) {
    PF_CHECK(shape.size() == 3, ConfigError, "synthetic shape must be [C, H, W]");
    return std::make_shared<SyntheticDataset>(size, num_classes, shape, seed);
}

// ------------------------------------------------------------------------------------------------
// Loader

Loader::Loader(std::shared_ptr<const Dataset> dataset,
               std::vector<int64_t> indices,
               LoaderOptions options)
    : dataset_(std::move(dataset)), indices_(std::move(indices)), options_(std::move(options)) {
    PF_CHECK(options_.batch_size >= 1, ConfigError, "batch size must be >= 1");
    PF_CHECK(options_.world_size >= 1 && options_.rank >= 0 && options_.rank < options_.world_size,
             ConfigError, "rank {} is not in [0, {})", options_.rank, options_.world_size);
}

Loader::~Loader() {
    stop_workers();
}

int64_t Loader::num_batches() const {
    int64_t n = static_cast<int64_t>(indices_.size());
    int64_t per_rank = (n + options_.world_size - 1) / options_.world_size;
    if (options_.world_size > 1 && options_.drop_last) {
        per_rank = n / options_.world_size;
    }
    return options_.drop_last ? per_rank / options_.batch_size
                              : (per_rank + options_.batch_size - 1) / options_.batch_size;
}

void Loader::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) {
        t.join();
    }
    workers_.clear();
    std::lock_guard<std::mutex> lock(mutex_);
    ready_.clear();
    stopping_ = false;
    error_ = nullptr;
}

void Loader::start_epoch(int64_t epoch, int64_t first_batch) {
    stop_workers();
    epoch_ = epoch;
    std::vector<int64_t> order = indices_;
    if (options_.shuffle) {
        std::mt19937_64 rng(mix(options_.seed, static_cast<uint64_t>(epoch)));
        std::shuffle(order.begin(), order.end(), rng);
    }
    if (options_.world_size > 1) {
        // Like DistributedSampler: pad by wrapping to a multiple of world_size, then stride by
        // rank.
        size_t total = (order.size() + static_cast<size_t>(options_.world_size) - 1) /
                       static_cast<size_t>(options_.world_size) *
                       static_cast<size_t>(options_.world_size);
        for (size_t i = 0; order.size() < total; ++i) {
            order.push_back(order[i]);
        }
        std::vector<int64_t> shard;
        for (size_t i = static_cast<size_t>(options_.rank); i < order.size();
             i += static_cast<size_t>(options_.world_size)) {
            shard.push_back(order[i]);
        }
        order = std::move(shard);
    }
    order_ = std::move(order);
    end_batch_ = num_batches();
    next_batch_ = std::min(first_batch, end_batch_);
    next_to_produce_ = next_batch_;
    int64_t workers = std::max<int64_t>(1, options_.workers);
    for (int64_t w = 0; w < workers; ++w) {
        workers_.emplace_back([this, workers]() {
            while (true) {
                int64_t b = 0;
                {
                    std::unique_lock<std::mutex> lock(mutex_);
                    // Bounded prefetch: stay at most 2 batches per worker ahead of the consumer.
                    cv_.wait(lock, [&] {
                        return stopping_ || next_to_produce_ >= end_batch_ ||
                               next_to_produce_ < next_batch_ + 2 * workers;
                    });
                    if (stopping_ || next_to_produce_ >= end_batch_) {
                        return;
                    }
                    b = next_to_produce_++;
                }
                try {
                    Batch batch = make_batch(b);
                    std::lock_guard<std::mutex> lock(mutex_);
                    ready_[b] = std::move(batch);
                } catch (...) {
                    std::lock_guard<std::mutex> lock(mutex_);
                    error_ = std::current_exception();
                }
                cv_.notify_all();
            }
        });
    }
}

std::optional<Batch> Loader::next() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (next_batch_ >= end_batch_) {
        return std::nullopt;
    }
    PF_CHECK(!workers_.empty(), Error, "Loader::next() called before start_epoch()");
    cv_.wait(lock, [&] { return error_ != nullptr || ready_.count(next_batch_) != 0; });
    if (error_) {
        std::rethrow_exception(error_);
    }
    Batch batch = std::move(ready_.at(next_batch_));
    ready_.erase(next_batch_);
    ++next_batch_;
    lock.unlock();
    cv_.notify_all();
    return batch;
}

Batch Loader::make_batch(int64_t b) const {
    int64_t begin = b * options_.batch_size;
    int64_t end =
        std::min<int64_t>(begin + options_.batch_size, static_cast<int64_t>(order_.size()));
    int64_t n = end - begin;
    std::vector<int64_t> shape = dataset_->shape();
    int64_t c = shape[0];
    int64_t oh = options_.crop > 0 ? options_.crop : shape[1];
    int64_t ow = options_.crop > 0 ? options_.crop : shape[2];
    at::Tensor images = at::empty({n, c, oh, ow}, at::kFloat);
    at::Tensor labels = at::empty({n}, at::kLong);
    float* out = images.data_ptr<float>();
    int64_t* lab = labels.data_ptr<int64_t>();
    std::vector<float> scale(static_cast<size_t>(c)), shift(static_cast<size_t>(c));
    for (int64_t k = 0; k < c; ++k) {
        double m = options_.mean.empty()
                       ? 0.0
                       : options_.mean[static_cast<size_t>(k) % options_.mean.size()];
        double s =
            options_.std.empty() ? 1.0 : options_.std[static_cast<size_t>(k) % options_.std.size()];
        scale[static_cast<size_t>(k)] = static_cast<float>(1.0 / (255.0 * s));
        shift[static_cast<size_t>(k)] = static_cast<float>(-m / s);
    }
    const AugmentConfig& aug = options_.augmentation;
    for (int64_t i = 0; i < n; ++i) {
        int64_t index = order_[static_cast<size_t>(begin + i)];
        Image img = dataset_->get(index);
        PF_CHECK(img.channels == c, InputError, "image {} has {} channels, expected {}", index,
                 img.channels, c);
        lab[i] = dataset_->label(index);
        // Keyed by the sample's place in the epoch's global order (this rank's place × workers +
        // rank): N workers augment each image as one worker does.
        const int64_t place = (begin + i) * options_.world_size + options_.rank;
        std::mt19937_64 rng(
            mix(mix(options_.seed, static_cast<uint64_t>(epoch_)), static_cast<uint64_t>(place)));
        // Source window: its top-left corner (may be negative: zero padding) in the source image.
        int64_t y0 = (img.height - oh) / 2, x0 = (img.width - ow) / 2;
        bool flip = false;
        if (options_.augment) {
            if (aug.random_resized_crop) {
                std::uniform_real_distribution<double> area(aug.min_scale, 1.0);
                std::uniform_real_distribution<double> log_ratio(std::log(3.0 / 4.0),
                                                                 std::log(4.0 / 3.0));
                double total = static_cast<double>(img.height * img.width);
                double bh = img.height, bw = img.width, by = 0, bx = 0;
                for (int attempt = 0; attempt < 10; ++attempt) {
                    double a = total * area(rng);
                    double r = std::exp(log_ratio(rng));
                    double w = std::sqrt(a * r), h = std::sqrt(a / r);
                    if (w <= img.width && h <= img.height) {
                        bw = w;
                        bh = h;
                        by = std::uniform_real_distribution<double>(0, img.height - h)(rng);
                        bx = std::uniform_real_distribution<double>(0, img.width - w)(rng);
                        break;
                    }
                }
                img = resample(img, by, bx, bh, bw, oh, ow);
                y0 = x0 = 0;
            } else if (aug.crop_padding > 0 || img.height != oh || img.width != ow) {
                int64_t p = aug.crop_padding;
                std::uniform_int_distribution<int64_t> dy(-p, img.height - oh + p);
                std::uniform_int_distribution<int64_t> dx(-p, img.width - ow + p);
                y0 = dy(rng);
                x0 = dx(rng);
            }
            flip = aug.hflip && std::bernoulli_distribution(0.5)(rng);
        }
        for (int64_t k = 0; k < c; ++k) {
            const uint8_t* src = img.pixels.data() + k * img.height * img.width;
            float* dst = out + ((i * c + k) * oh) * ow;
            float sc = scale[static_cast<size_t>(k)], sh = shift[static_cast<size_t>(k)];
            for (int64_t y = 0; y < oh; ++y) {
                int64_t sy = y + y0;
                for (int64_t x = 0; x < ow; ++x) {
                    int64_t sx = (flip ? ow - 1 - x : x) + x0;
                    float v = (sy >= 0 && sy < img.height && sx >= 0 && sx < img.width)
                                  ? static_cast<float>(src[sy * img.width + sx])
                                  : 0.0f;
                    dst[y * ow + x] = v * sc + sh;
                }
            }
        }
    }
    return Batch{images, labels};
}

// ------------------------------------------------------------------------------------------------

namespace {
std::string first_existing(const std::string& root, const std::vector<std::string>& names) {
    for (const auto& n : names) {
        fs::path p = fs::path(root) / n;
        if (fs::is_regular_file(p)) {
            return p.string();
        }
    }
    throw InputError(fmt::format("failed to find {} in {}", join(names, " or "), root));
}

std::string cifar_dir(const std::string& root, bool cifar100) {
    const char* sub = cifar100 ? "cifar-100-binary" : "cifar-10-batches-bin";
    if (fs::is_directory(fs::path(root) / sub)) {
        return (fs::path(root) / sub).string();
    }
    return root;
}
}  // namespace

DataBundle load_data(const DataConfig& cfg, uint64_t seed) {
    DataBundle d;
    const std::string& ds = cfg.dataset;
    if (ds == "fashion_mnist" || ds == "mnist") {
        auto find = [&](const std::string& stem) {
            return first_existing(cfg.root, {stem + ".gz", stem});
        };
        d.train_set = load_idx(find("train-images-idx3-ubyte"), find("train-labels-idx1-ubyte"),
                               cfg.train_limit);
        d.test_set = load_idx(find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte"),
                              cfg.test_limit);
    } else if (ds == "cifar10" || ds == "cifar100") {
        std::string dir = cifar_dir(cfg.root, ds == "cifar100");
        d.train_set = load_cifar(dir, ds == "cifar100", true, cfg.train_limit);
        d.test_set = load_cifar(dir, ds == "cifar100", false, cfg.test_limit);
    } else if (ds == "imagefolder") {
        fs::path val = fs::path(cfg.root) / "val";
        if (!fs::is_directory(val)) {
            val = fs::path(cfg.root) / "test";
        }
        d.train_set =
            load_image_folder((fs::path(cfg.root) / "train").string(), cfg.resize, cfg.train_limit);
        d.test_set = load_image_folder(val.string(), cfg.resize, cfg.test_limit);
        // Labels are class folders in sorted order: both splits must have the same folders, or
        // label k means another class in each.
        auto classes = [](const fs::path& dir) {
            std::set<std::string> out;
            for (const auto& e : fs::directory_iterator(dir)) {
                if (e.is_directory()) {
                    out.insert(e.path().filename().string());
                }
            }
            return out;
        };
        const auto train_classes = classes(fs::path(cfg.root) / "train");
        const auto val_classes = classes(val);
        if (train_classes != val_classes) {
            std::vector<std::string> only_train, only_val;
            std::set_difference(train_classes.begin(), train_classes.end(), val_classes.begin(),
                                val_classes.end(), std::back_inserter(only_train));
            std::set_difference(val_classes.begin(), val_classes.end(), train_classes.begin(),
                                train_classes.end(), std::back_inserter(only_val));
            auto some = [](const std::vector<std::string>& v) {
                std::vector<std::string> head(v.begin(), v.begin() + std::min<size_t>(v.size(), 5));
                return v.empty() ? std::string("none")
                                 : join(head, ", ") + (v.size() > 5 ? ", ..." : "");
            };
            throw InputError(fmt::format(
                "failed to read {}: the class folders of {} differ from train/ ({} only in "
                "train/: {}; {} only in {}: {})",
                cfg.root, val.filename().string(), only_train.size(), some(only_train),
                only_val.size(), val.filename().string(), some(only_val)));
        }
    } else if (ds == "synthetic") {
        d.train_set = make_synthetic(cfg.synthetic_train, cfg.synthetic_classes,
                                     cfg.synthetic_shape, seed + 1);
        // Same class patterns (same seed) so the test set measures the same task.
        auto all = make_synthetic(cfg.synthetic_train + cfg.synthetic_test, cfg.synthetic_classes,
                                  cfg.synthetic_shape, seed + 1);
        d.test_set = all;
        for (int64_t i = cfg.synthetic_train; i < cfg.synthetic_train + cfg.synthetic_test; ++i) {
            d.test_indices.push_back(i);
        }
    } else {
        throw ConfigError(fmt::format("unknown dataset '{}'", ds));
    }
    if (!cfg.reshape.empty()) {
        const int64_t from = d.train_set->shape()[0], to = cfg.reshape[0];
        PF_CHECK(from == to || from == 1 || to == 1, ConfigError,
                 "failed to reshape {} images of {} channels to {}", ds, from, to);
        d.train_set = std::make_shared<ReshapedDataset>(d.train_set, cfg.reshape);
        d.test_set = d.test_set == nullptr
                         ? nullptr
                         : std::make_shared<ReshapedDataset>(d.test_set, cfg.reshape);
    }
    PF_CHECK(d.test_set->num_classes() <= d.train_set->num_classes(), InputError,
             "failed to read {} data in {}: the test set has labels up to {} but the training set "
             "has {} classes",
             ds, cfg.root, d.test_set->num_classes() - 1, d.train_set->num_classes());
    if (d.test_indices.empty()) {
        d.test_indices.resize(static_cast<size_t>(d.test_set->size()));
        std::iota(d.test_indices.begin(), d.test_indices.end(), 0);
    }
    int64_t n = d.train_set->size();
    PF_CHECK(cfg.val_size < n, ConfigError,
             "failed to split data with val_size {}: the training set has only {} images",
             cfg.val_size, n);
    std::vector<int64_t> perm(static_cast<size_t>(n));
    std::iota(perm.begin(), perm.end(), 0);
    if (cfg.val_size > 0) {
        std::shuffle(perm.begin(), perm.end(), std::mt19937_64(mix(seed, 0xDA7A)));
        d.val_indices.assign(perm.end() - cfg.val_size, perm.end());
        perm.resize(static_cast<size_t>(n - cfg.val_size));
        std::sort(perm.begin(), perm.end());
        std::sort(d.val_indices.begin(), d.val_indices.end());
    }
    d.train_indices = std::move(perm);
    d.num_classes = d.train_set->num_classes();
    std::vector<int64_t> shape = d.train_set->shape();
    if (ds == "imagefolder") {
        shape[1] = shape[2] = cfg.image_size;
    }
    d.input_shape = shape;
    d.mean = cfg.mean;
    d.std = cfg.std;
    PF_CHECK(
        d.mean.empty() || d.mean.size() == 1 || static_cast<int64_t>(d.mean.size()) == shape[0],
        ConfigError, "data.mean has {} values but images have {} channels", d.mean.size(),
        shape[0]);
    return d;
}

namespace {
LoaderOptions base_options(const DataBundle& d, const DataConfig& cfg) {
    LoaderOptions o;
    o.mean = d.mean;
    o.std = d.std;
    o.workers = cfg.workers;
    o.crop = cfg.dataset == "imagefolder" ? cfg.image_size : 0;
    o.batch_size = cfg.eval_batch_size;
    return o;
}
}  // namespace

std::unique_ptr<Loader> DataBundle::train_loader(const DataConfig& cfg,
                                                 uint64_t seed,
                                                 int64_t rank,
                                                 int64_t world) const {
    LoaderOptions o = base_options(*this, cfg);
    o.batch_size = cfg.batch_size;
    o.shuffle = true;
    o.drop_last = static_cast<int64_t>(train_indices.size()) / world >= cfg.batch_size;
    o.augment = true;
    o.augmentation = cfg.augment;
    o.seed = seed;
    o.rank = rank;
    o.world_size = world;
    return std::make_unique<Loader>(train_set, train_indices, o);
}

std::unique_ptr<Loader> DataBundle::val_loader(const DataConfig& cfg) const {
    return std::make_unique<Loader>(train_set, val_indices, base_options(*this, cfg));
}

std::unique_ptr<Loader> DataBundle::test_loader(const DataConfig& cfg) const {
    return std::make_unique<Loader>(test_set, test_indices, base_options(*this, cfg));
}

}  // namespace pocketflow
