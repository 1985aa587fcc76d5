// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "pocketflow/config.h"

namespace pocketflow {

/// An 8-bit image in CHW layout.
struct Image {
    int64_t channels = 0, height = 0, width = 0;
    std::vector<uint8_t> pixels;
};

/// Random-access labelled images. Implementations: IDX (MNIST/Fashion-MNIST), CIFAR binary, image
/// folders (JPEG/PNG) and synthetic data. Thread-safe for concurrent get().
class Dataset {
public:
    virtual ~Dataset() = default;
    virtual int64_t size() const = 0;
    virtual Image get(int64_t index) const = 0;
    virtual int64_t label(int64_t index) const = 0;
    virtual int64_t num_classes() const = 0;
    /// Nominal {C, H, W} of an image (image folders: after resize/crop).
    virtual std::vector<int64_t> shape() const = 0;
};

/// Decodes a PNG (".png") or JPEG (any other extension) file's bytes to CHW RGB; InputError naming
/// `path` for a corrupt file or one that declares over 16384 pixels a side (checked before the
/// pixels are allocated).
Image decode_image(const std::string& path, const std::string& bytes);

/// Reads IDX image and label files (gzip-compressed or raw). Throws InputError for missing,
/// truncated or inconsistent files.
std::shared_ptr<Dataset> load_idx(const std::string& images_path,
                                  const std::string& labels_path,
                                  int64_t limit = 0);
/// Reads CIFAR-10 (`data_batch_{1..5}.bin` / `test_batch.bin`) or CIFAR-100 (`train.bin` /
/// `test.bin`, fine labels) binary files from `root`.
std::shared_ptr<Dataset> load_cifar(const std::string& root,
                                    bool cifar100,
                                    bool train,
                                    int64_t limit = 0);
/// An ImageNet-style tree `root/<class>/*.{jpg,jpeg,png}`; classes sorted by name. Images are
/// decoded on access, resized so the shorter side is `resize`, and exposed at that size.
std::shared_ptr<Dataset> load_image_folder(const std::string& root,
                                           int64_t resize,
                                           int64_t limit = 0);
/// Deterministic synthetic images: each class has its own pattern plus noise, so it is learnable.
std::shared_ptr<Dataset> make_synthetic(int64_t size,
                                        int64_t num_classes,
                                        const std::vector<int64_t>& shape,
                                        uint64_t seed);

/// A batch: images [N, C, H, W] float32 normalised, labels [N] int64.
struct Batch {
    at::Tensor images;
    at::Tensor labels;
};

struct LoaderOptions {
    int64_t batch_size = 128;
    bool shuffle = false;
    bool drop_last = false;
    bool augment = false;
    AugmentConfig augmentation;
    int64_t crop = 0;  ///< output H = W for variable-size images (0: the dataset's shape)
    std::vector<double> mean, std;
    int64_t workers = 1;
    uint64_t seed = 0;
    int64_t rank = 0, world_size = 1;  ///< shard-by-rank sampling for data-parallel training
};

/// Batches a subset of a dataset with seeded shuffling, augmentation, normalisation and background
/// prefetch threads. The order and augmentation of epoch e depend only on (seed, e), so a resumed
/// run sees the same batches as an uninterrupted one.
///
/// Example:
///   Loader loader(ds, indices, opts);
///   loader.start_epoch(0);
///   while (auto batch = loader.next()) { ... }
class Loader {
public:
    Loader(std::shared_ptr<const Dataset> dataset,
           std::vector<int64_t> indices,
           LoaderOptions options);
    ~Loader();
    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;

    /// Batches per epoch (for this rank).
    int64_t num_batches() const;
    int64_t num_samples() const { return static_cast<int64_t>(indices_.size()); }
    /// Starts epoch `epoch`, skipping its first `first_batch` batches (resume).
    void start_epoch(int64_t epoch, int64_t first_batch = 0);
    /// The next batch of the epoch, or nullopt at its end.
    std::optional<Batch> next();

    const LoaderOptions& options() const { return options_; }

private:
    void stop_workers();
    Batch make_batch(int64_t batch_index) const;

    std::shared_ptr<const Dataset> dataset_;
    std::vector<int64_t> indices_;
    LoaderOptions options_;
    std::vector<int64_t> order_;  // this epoch's sample order (this rank's shard)
    int64_t epoch_ = 0;
    int64_t next_batch_ = 0, end_batch_ = 0, next_to_produce_ = 0;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable cv_;
    std::map<int64_t, Batch> ready_;
    std::exception_ptr error_;
    bool stopping_ = false;
};

/// The data of a job: train/validation/test loaders and the facts models are built from.
struct DataBundle {
    std::shared_ptr<Dataset> train_set, test_set;
    std::vector<int64_t> train_indices, val_indices, test_indices;
    std::vector<int64_t> input_shape;  ///< {C, H, W} fed to the model
    int64_t num_classes = 0;
    std::vector<double> mean, std;

    std::unique_ptr<Loader> train_loader(const DataConfig& cfg,
                                         uint64_t seed,
                                         int64_t rank = 0,
                                         int64_t world = 1) const;
    std::unique_ptr<Loader> val_loader(const DataConfig& cfg) const;
    std::unique_ptr<Loader> test_loader(const DataConfig& cfg) const;
};

/// Opens the datasets a DataConfig names and carves the seeded validation split.
DataBundle load_data(const DataConfig& cfg, uint64_t seed);

}  // namespace pocketflow
