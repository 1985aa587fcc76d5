// SPDX-License-Identifier: Apache-2.0
// Image files: JPEG/PNG decoding with size checks, bilinear resampling, image-folder datasets.
// The other readers (IDX, CIFAR, synthetic) and the Loader: data.cpp.
#include "images.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include <png.h>
#include <turbojpeg.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow {

namespace fs = std::filesystem;

namespace {

/// An Image (CHW) from interleaved RGB rows (HWC), as the decoders produce them.
Image from_rgb(const std::vector<uint8_t>& hwc, int64_t h, int64_t w) {
    Image img{3, h, w, std::vector<uint8_t>(hwc.size())};
    for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
            for (int64_t c = 0; c < 3; ++c) {
                img.pixels[static_cast<size_t>((c * h + y) * w + x)] =
                    hwc[static_cast<size_t>((y * w + x) * 3 + c)];
            }
        }
    }
    return img;
}

/// Dimensions an image header declares, checked before the pixels are allocated: a crafted
/// header can declare gigapixels in a few bytes.
constexpr int64_t kMaxImageSide = 16384;

constexpr int64_t kMaxImagePixels = int64_t{1} << 26;  // 64 Mpx: 192 MiB of RGB

void check_image_size(const std::string& path, int64_t w, int64_t h) {
    PF_CHECK(w > 0 && h > 0 && w <= kMaxImageSide && h <= kMaxImageSide, InputError,
             "failed to decode {}: it declares {}x{} pixels; sides of 1 to {} are supported", path,
             w, h, kMaxImageSide);
    PF_CHECK(w * h <= kMaxImagePixels, InputError,
             "failed to decode {}: it declares {}x{} pixels; at most {} Mpx are supported", path, w,
             h, kMaxImagePixels >> 20);
}

Image decode_jpeg(const std::string& path, const std::string& bytes) {
    tjhandle tj = tjInitDecompress();
    PF_CHECK(tj != nullptr, Error, "failed to initialise libjpeg-turbo");
    int w = 0, h = 0, subsamp = 0, colorspace = 0;
    auto* src = reinterpret_cast<const unsigned char*>(bytes.data());
    if (tjDecompressHeader3(tj, src, bytes.size(), &w, &h, &subsamp, &colorspace) != 0) {
        std::string msg = tjGetErrorStr2(tj);
        tjDestroy(tj);
        throw InputError(fmt::format("failed to decode {}: {}", path, msg));
    }
    if (w <= 0 || h <= 0 || w > kMaxImageSide || h > kMaxImageSide ||
        int64_t{w} * h > kMaxImagePixels) {
        tjDestroy(tj);
        check_image_size(path, w, h);
    }
    std::vector<uint8_t> hwc(static_cast<size_t>(w) * static_cast<size_t>(h) * 3);
    int rc =
        tjDecompress2(tj, src, bytes.size(), hwc.data(), w, 0, h, TJPF_RGB, TJFLAG_ACCURATEDCT);
    std::string msg = rc != 0 ? tjGetErrorStr2(tj) : "";
    tjDestroy(tj);
    PF_CHECK(rc == 0, InputError, "failed to decode {}: {}", path, msg);
    return from_rgb(hwc, h, w);
}

Image decode_png(const std::string& path, const std::string& bytes) {
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    PF_CHECK(png_image_begin_read_from_memory(&image, bytes.data(), bytes.size()) != 0, InputError,
             "failed to decode {}: {}", path, image.message);
    if (image.width == 0 || image.height == 0 || image.width > kMaxImageSide ||
        image.height > kMaxImageSide || int64_t{image.width} * image.height > kMaxImagePixels) {
        png_image_free(&image);
        check_image_size(path, image.width, image.height);
    }
    image.format = PNG_FORMAT_RGB;
    std::vector<uint8_t> hwc(PNG_IMAGE_SIZE(image));
    if (png_image_finish_read(&image, nullptr, hwc.data(), 0, nullptr) == 0) {
        std::string msg = image.message;
        png_image_free(&image);
        throw InputError(fmt::format("failed to decode {}: {}", path, msg));
    }
    int64_t h = image.height, w = image.width;
    return from_rgb(hwc, h, w);
}

}  // namespace

/// Bilinear sample of the source box [x0, x0+bw) × [y0, y0+bh) into an out_h × out_w image.
Image resample(
    const Image& src, double y0, double x0, double bh, double bw, int64_t out_h, int64_t out_w) {
    Image out{src.channels, out_h, out_w,
              std::vector<uint8_t>(static_cast<size_t>(src.channels * out_h * out_w))};
    for (int64_t y = 0; y < out_h; ++y) {
        double sy =
            std::clamp(y0 + (y + 0.5) * bh / out_h - 0.5, 0.0, static_cast<double>(src.height - 1));
        auto iy = static_cast<int64_t>(sy);
        int64_t iy1 = std::min(iy + 1, src.height - 1);
        double fy = sy - iy;
        for (int64_t x = 0; x < out_w; ++x) {
            double sx = std::clamp(x0 + (x + 0.5) * bw / out_w - 0.5, 0.0,
                                   static_cast<double>(src.width - 1));
            auto ix = static_cast<int64_t>(sx);
            int64_t ix1 = std::min(ix + 1, src.width - 1);
            double fx = sx - ix;
            for (int64_t c = 0; c < src.channels; ++c) {
                const uint8_t* p = src.pixels.data() + c * src.height * src.width;
                double v =
                    (1 - fy) * ((1 - fx) * p[iy * src.width + ix] + fx * p[iy * src.width + ix1]) +
                    fy * ((1 - fx) * p[iy1 * src.width + ix] + fx * p[iy1 * src.width + ix1]);
                out.pixels[static_cast<size_t>((c * out_h + y) * out_w + x)] =
                    static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
            }
        }
    }
    return out;
}

namespace {

class ImageFolderDataset : public Dataset {
public:
    ImageFolderDataset(std::vector<std::string> files,
                       std::vector<int64_t> labels,
                       int64_t classes,
                       int64_t resize)
        : files_(std::move(files)),
          labels_(std::move(labels)),
          classes_(classes),
          resize_(resize) {}
    int64_t size() const override { return static_cast<int64_t>(files_.size()); }
    Image get(int64_t i) const override {
        const std::string& path = files_[static_cast<size_t>(i)];
        Image img = decode_image(path, read_file(path));
        double scale =
            static_cast<double>(resize_) / static_cast<double>(std::min(img.height, img.width));
        int64_t h = std::max<int64_t>(resize_, std::lround(img.height * scale));
        int64_t w = std::max<int64_t>(resize_, std::lround(img.width * scale));
        return resample(img, 0, 0, static_cast<double>(img.height), static_cast<double>(img.width),
                        h, w);
    }
    int64_t label(int64_t i) const override { return labels_[static_cast<size_t>(i)]; }
    int64_t num_classes() const override { return classes_; }
    std::vector<int64_t> shape() const override { return {3, resize_, resize_}; }

private:
    std::vector<std::string> files_;
    std::vector<int64_t> labels_;
    int64_t classes_;
    int64_t resize_;
};
}  // namespace

Image decode_image(const std::string& path, const std::string& bytes) {
    std::string ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
    return ext == ".png" ? decode_png(path, bytes) : decode_jpeg(path, bytes);
}

std::shared_ptr<Dataset> load_image_folder(const std::string& root, int64_t resize, int64_t limit) {
    PF_CHECK(fs::is_directory(root), InputError,
             "failed to read image folder {}: no such directory", root);
    std::vector<std::string> classes;
    for (const auto& entry : fs::directory_iterator(root)) {
        if (entry.is_directory()) {
            classes.push_back(entry.path().filename().string());
        }
    }
    std::sort(classes.begin(), classes.end());
    PF_CHECK(!classes.empty(), InputError, "failed to read image folder {}: no class sub-folders",
             root);
    std::vector<std::string> files;
    std::vector<int64_t> labels;
    for (size_t c = 0; c < classes.size(); ++c) {
        std::vector<std::string> class_files;
        for (const auto& entry : fs::directory_iterator(fs::path(root) / classes[c])) {
            std::string ext = entry.path().extension().string();
            std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
            if (entry.is_regular_file() && (ext == ".jpg" || ext == ".jpeg" || ext == ".png")) {
                class_files.push_back(entry.path().string());
            }
        }
        std::sort(class_files.begin(), class_files.end());
        for (auto& f : class_files) {
            files.push_back(std::move(f));
            labels.push_back(static_cast<int64_t>(c));
        }
    }
    PF_CHECK(!files.empty(), InputError, "failed to read image folder {}: no .jpg/.jpeg/.png files",
             root);
    if (limit > 0 && static_cast<int64_t>(files.size()) > limit) {
        // Keep every class represented: take a seeded, stable subset rather than the first files.
        std::vector<size_t> idx(files.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::shuffle(idx.begin(), idx.end(), std::mt19937_64(12345));
        idx.resize(static_cast<size_t>(limit));
        std::sort(idx.begin(), idx.end());
        std::vector<std::string> f2;
        std::vector<int64_t> l2;
        for (size_t i : idx) {
            f2.push_back(files[i]);
            l2.push_back(labels[i]);
        }
        files = std::move(f2);
        labels = std::move(l2);
    }
    return std::make_shared<ImageFolderDataset>(std::move(files), std::move(labels),
                                                static_cast<int64_t>(classes.size()), resize);
}

}  // namespace pocketflow
