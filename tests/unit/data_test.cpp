// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/data.h"

#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include <gtest/gtest.h>
#include <png.h>
#include <torch/torch.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

#include "support/test_util.h"

namespace pocketflow {
namespace {

using testing::expect_error;
using testing::TempDir;

void put_be32(std::string& s, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) {
        s.push_back(static_cast<char>((v >> shift) & 0xff));
    }
}

/// Writes n IDX images (h×w, pixel = i + y + x) and labels (i % 10), gzipped or raw.
void write_idx(const std::string& images, const std::string& labels, int n, int h, int w, bool gz) {
    std::string img, lab;
    put_be32(img, 0x803);
    put_be32(img, static_cast<uint32_t>(n));
    put_be32(img, static_cast<uint32_t>(h));
    put_be32(img, static_cast<uint32_t>(w));
    put_be32(lab, 0x801);
    put_be32(lab, static_cast<uint32_t>(n));
    for (int i = 0; i < n; ++i) {
        for (int y = 0; y < h; ++y) {
            for (int x = 0; x < w; ++x) {
                img.push_back(static_cast<char>((i + y + x) & 0xff));
            }
        }
        lab.push_back(static_cast<char>(i % 10));
    }
    for (const auto& [path, data] : {std::pair{images, img}, std::pair{labels, lab}}) {
        if (gz) {
            gzFile f = gzopen(path.c_str(), "wb");
            gzwrite(f, data.data(), static_cast<unsigned>(data.size()));
            gzclose(f);
        } else {
            write_file_atomic(path, data);
        }
    }
}

TEST(DataTest, IdxGzippedAndRaw) {
    TempDir dir;
    for (bool gz : {true, false}) {
        std::string im = dir.file(gz ? "i.gz" : "i"), lb = dir.file(gz ? "l.gz" : "l");
        write_idx(im, lb, 12, 5, 4, gz);
        auto ds = load_idx(im, lb);
        EXPECT_EQ(ds->size(), 12);
        EXPECT_EQ(ds->shape(), (std::vector<int64_t>{1, 5, 4}));
        EXPECT_EQ(ds->num_classes(), 10);
        EXPECT_EQ(ds->label(11), 1);
        Image img = ds->get(3);
        EXPECT_EQ(img.pixels[static_cast<size_t>(2 * 4 + 1)], 3 + 2 + 1);
        EXPECT_EQ(load_idx(im, lb, 5)->size(), 5);
    }
}

TEST(DataTest, IdxErrors) {
    TempDir dir;
    write_idx(dir.file("i"), dir.file("l"), 12, 5, 4, false);
    std::string bytes = read_file(dir.file("i"));
    write_file_atomic(dir.file("short"), bytes.substr(0, bytes.size() - 7));
    expect_error<InputError>([&] { load_idx(dir.file("short"), dir.file("l")); }, "truncated");
    expect_error<InputError>([&] { load_idx(dir.file("l"), dir.file("l")); },
                             "not an IDX image file");
    expect_error<InputError>([&] { load_idx(dir.file("nope"), dir.file("l")); }, "no such file");
    write_idx(dir.file("i2"), dir.file("l2"), 11, 5, 4, false);
    expect_error<InputError>([&] { load_idx(dir.file("i"), dir.file("l2")); },
                             "12 images but 11 labels");
}

TEST(DataTest, Cifar10And100) {
    TempDir dir;
    auto write = [&](const std::string& name, int n, bool c100) {
        std::string s;
        for (int i = 0; i < n; ++i) {
            if (c100) {
                s.push_back(static_cast<char>(i % 20));
            }
            s.push_back(static_cast<char>(c100 ? (i * 7) % 100 : i % 10));
            for (int k = 0; k < 3072; ++k) {
                s.push_back(static_cast<char>((k + i) & 0xff));
            }
        }
        write_file_atomic(dir.file(name), s);
    };
    for (int b = 1; b <= 5; ++b) {
        write("data_batch_" + std::to_string(b) + ".bin", 3, false);
    }
    write("test_batch.bin", 4, false);
    auto train = load_cifar(dir.path().string(), false, true);
    EXPECT_EQ(train->size(), 15);
    EXPECT_EQ(train->shape(), (std::vector<int64_t>{3, 32, 32}));
    EXPECT_EQ(train->label(4), 1);
    EXPECT_EQ(train->get(4).pixels[5], 5 + 1);  // record 1 of batch 2
    EXPECT_EQ(load_cifar(dir.path().string(), false, false)->size(), 4);
    write("train.bin", 6, true);
    auto c100 = load_cifar(dir.path().string(), true, true);
    EXPECT_EQ(c100->num_classes(), 100);
    EXPECT_EQ(c100->label(3), 21);  // fine label, not the coarse one
    write_file_atomic(dir.file("test.bin"), std::string(100, 'x'));
    expect_error<InputError>([&] { load_cifar(dir.path().string(), true, false); },
                             "not a multiple");
}

void write_png(const std::string& path, int w, int h, uint8_t value) {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    image.width = static_cast<png_uint_32>(w);
    image.height = static_cast<png_uint_32>(h);
    image.format = PNG_FORMAT_RGB;
    std::vector<uint8_t> px(static_cast<size_t>(w * h * 3), value);
    ASSERT_NE(png_image_write_to_file(&image, path.c_str(), 0, px.data(), 0, nullptr), 0);
}

void write_jpeg(const std::string& path, int w, int h, uint8_t value) {
    tjhandle tj = tjInitCompress();
    std::vector<uint8_t> px(static_cast<size_t>(w * h * 3), value);
    unsigned char* out = nullptr;
    unsigned long size = 0;
    ASSERT_EQ(tjCompress2(tj, px.data(), w, 0, h, TJPF_RGB, &out, &size, TJSAMP_444, 95, 0), 0);
    write_file_atomic(path, std::string(reinterpret_cast<char*>(out), size));
    tjFree(out);
    tjDestroy(tj);
}

TEST(DataTest, ImageFolderDecodesJpegAndPngAndResizes) {
    TempDir dir;
    std::filesystem::create_directories(dir.path() / "cat");
    std::filesystem::create_directories(dir.path() / "dog");
    write_jpeg(dir.file("cat/a.jpg"), 40, 20, 200);
    write_png(dir.file("dog/b.png"), 16, 32, 50);
    write_file_atomic(dir.file("dog/readme.txt"), "ignored");
    auto ds = load_image_folder(dir.path().string(), 16);
    ASSERT_EQ(ds->size(), 2);
    EXPECT_EQ(ds->num_classes(), 2);
    EXPECT_EQ(ds->label(0), 0);
    EXPECT_EQ(ds->label(1), 1);
    Image a = ds->get(0);
    EXPECT_EQ(a.channels, 3);
    EXPECT_EQ(a.height, 16);  // shorter side resized to 16
    EXPECT_EQ(a.width, 32);
    EXPECT_NEAR(a.pixels[100], 200, 3);
    Image b = ds->get(1);
    EXPECT_EQ(b.width, 16);
    EXPECT_EQ(b.height, 32);
    EXPECT_EQ(b.pixels[7], 50);
    write_file_atomic(dir.file("dog/broken.jpg"), "not a jpeg");
    auto ds2 = load_image_folder(dir.path().string(), 16);
    expect_error<InputError>([&] { ds2->get(2); }, "failed to decode");
}

TEST(DataTest, SyntheticIsDeterministicAndBalanced) {
    auto a = make_synthetic(100, 4, {2, 6, 6}, 7);
    auto b = make_synthetic(100, 4, {2, 6, 6}, 7);
    EXPECT_EQ(a->get(17).pixels, b->get(17).pixels);
    std::vector<int> counts(4);
    for (int64_t i = 0; i < 100; ++i) {
        ++counts[static_cast<size_t>(a->label(i))];
    }
    for (int c : counts) {
        EXPECT_GE(c, 15);
    }
}

TEST(DataTest, ReshapeResizesAndCopiesGreyToColour) {
    DataConfig cfg;
    cfg.dataset = "synthetic";
    cfg.synthetic_train = 8;
    cfg.synthetic_test = 4;
    cfg.synthetic_shape = {1, 8, 8};
    DataBundle plain = load_data(cfg, 2);
    cfg.reshape = {3, 16, 16};
    DataBundle big = load_data(cfg, 2);
    EXPECT_EQ(big.input_shape, (std::vector<int64_t>{3, 16, 16}));
    Image a = plain.train_set->get(3), b = big.train_set->get(3);
    ASSERT_EQ(b.pixels.size(), 3u * 16 * 16);
    EXPECT_EQ(big.train_set->label(3), plain.train_set->label(3));
    for (int64_t c = 1; c < 3; ++c) {  // every channel a copy of the grey one
        EXPECT_TRUE(
            std::equal(b.pixels.begin(), b.pixels.begin() + 256, b.pixels.begin() + c * 256));
    }
    // Bilinear 2x: interior output pixels lie between their source neighbours; the mean is kept.
    double mean_a = 0, mean_b = 0;
    for (auto p : a.pixels) {
        mean_a += p;
    }
    for (size_t i = 0; i < 256; ++i) {
        mean_b += b.pixels[i];
    }
    EXPECT_NEAR(mean_a / 64, mean_b / 256, 2.0);
    EXPECT_EQ(b.pixels[0], a.pixels[0]);  // corners clamp to the source corner
}

LoaderOptions options(int64_t batch, bool shuffle) {
    LoaderOptions o;
    o.batch_size = batch;
    o.shuffle = shuffle;
    o.seed = 3;
    o.workers = 2;
    return o;
}

std::vector<int64_t> epoch_labels(Loader& loader, int64_t epoch, int64_t first = 0) {
    std::vector<int64_t> out;
    loader.start_epoch(epoch, first);
    while (auto b = loader.next()) {
        auto l = b->labels;
        out.insert(out.end(), l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
    }
    return out;
}

TEST(LoaderTest, BatchesNormalisesAndCoversEverySample) {
    auto ds = make_synthetic(50, 50, {1, 4, 4}, 1);  // 50 classes: labels identify samples
    std::vector<int64_t> idx(50);
    std::iota(idx.begin(), idx.end(), 0);
    LoaderOptions o = options(8, true);
    o.mean = {0.5};
    o.std = {0.25};
    Loader loader(ds, idx, o);
    EXPECT_EQ(loader.num_batches(), 7);
    loader.start_epoch(0);
    auto first = loader.next();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->images.sizes(), (std::vector<int64_t>{8, 1, 4, 4}));
    int64_t sample = first->labels[0].item<int64_t>();
    // labels of make_synthetic(50 classes) are a permutation, so find the index of this label
    int64_t index = -1;
    for (int64_t i = 0; i < 50; ++i) {
        if (ds->label(i) == sample) {
            index = i;
        }
    }
    float expect = (static_cast<float>(ds->get(index).pixels[0]) / 255.0f - 0.5f) / 0.25f;
    EXPECT_NEAR(first->images[0][0][0][0].item<float>(), expect, 1e-5);
    auto labels = epoch_labels(loader, 0);
    std::sort(labels.begin(), labels.end());
    EXPECT_EQ(labels.size(), 50u);
    EXPECT_EQ(std::unique(labels.begin(), labels.end()), labels.end());
}

TEST(LoaderTest, SeededOrderResumeAndEpochsDiffer) {
    auto ds = make_synthetic(64, 64, {1, 4, 4}, 1);
    std::vector<int64_t> idx(64);
    std::iota(idx.begin(), idx.end(), 0);
    Loader a(ds, idx, options(8, true)), b(ds, idx, options(8, true));
    auto e0 = epoch_labels(a, 0);
    EXPECT_EQ(e0, epoch_labels(b, 0));
    EXPECT_NE(e0, epoch_labels(a, 1));
    auto tail = epoch_labels(b, 0, 3);  // resume at batch 3
    EXPECT_EQ(tail, std::vector<int64_t>(e0.begin() + 24, e0.end()));
}

TEST(LoaderTest, ShardsAreDisjointAndCover) {
    auto ds = make_synthetic(40, 40, {1, 2, 2}, 1);
    std::vector<int64_t> idx(40);
    std::iota(idx.begin(), idx.end(), 0);
    std::vector<int64_t> all;
    for (int64_t rank = 0; rank < 4; ++rank) {
        LoaderOptions o = options(5, true);
        o.rank = rank;
        o.world_size = 4;
        Loader l(ds, idx, o);
        EXPECT_EQ(l.num_batches(), 2);
        auto labels = epoch_labels(l, 2);
        all.insert(all.end(), labels.begin(), labels.end());
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all.size(), 40u);
    EXPECT_EQ(std::unique(all.begin(), all.end()), all.end());
}

TEST(LoaderTest, AugmentationPadsCropsAndFlips) {
    // One 1×3×3 image with distinct pixels; padding 1 and flips must produce shifted/mirrored
    // copies.
    auto ds = make_synthetic(1, 2, {1, 3, 3}, 1);
    LoaderOptions o = options(1, false);
    o.augment = true;
    o.augmentation.crop_padding = 1;
    o.augmentation.hflip = true;
    Loader loader(ds, {0}, o);
    Image src = ds->get(0);
    std::set<std::vector<float>> variants;
    for (int64_t epoch = 0; epoch < 60; ++epoch) {
        loader.start_epoch(epoch);
        auto b = loader.next();
        auto t = b->images.flatten();
        variants.insert(std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel()));
    }
    EXPECT_GT(variants.size(), 8u);  // 9 offsets × 2 flips possible
    for (const auto& v : variants) {
        // Every output pixel is either padding (0) or one of the source pixels.
        for (float p : v) {
            bool ok = p == 0.0f;
            for (uint8_t s : src.pixels) {
                ok = ok || std::abs(p - s / 255.0f) < 1e-6;
            }
            EXPECT_TRUE(ok) << p;
        }
    }
}

TEST(LoaderTest, ValidationSplitIsSeededAndDisjoint) {
    DataConfig cfg;
    cfg.dataset = "synthetic";
    cfg.synthetic_train = 100;
    cfg.val_size = 20;
    DataBundle a = load_data(cfg, 5), b = load_data(cfg, 5), c = load_data(cfg, 6);
    EXPECT_EQ(a.val_indices, b.val_indices);
    EXPECT_NE(a.val_indices, c.val_indices);
    EXPECT_EQ(a.train_indices.size(), 80u);
    std::vector<int64_t> both = a.train_indices;
    both.insert(both.end(), a.val_indices.begin(), a.val_indices.end());
    std::sort(both.begin(), both.end());
    EXPECT_EQ(std::unique(both.begin(), both.end()), both.end());
    cfg.val_size = 100;
    expect_error<ConfigError>([&] { load_data(cfg, 1); }, "has only 100 images");
}

}  // namespace
}  // namespace pocketflow
