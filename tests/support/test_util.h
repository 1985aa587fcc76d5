// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <filesystem>
#include <random>
#include <string>

#include <gtest/gtest.h>
#include <png.h>

namespace pocketflow::testing {

/// A w x h RGB PNG at `path` (directories made): `shade` plus a small ramp, so the pixels vary.
inline void write_png(const std::filesystem::path& path, int w, int h, uint8_t shade = 100) {
    std::vector<uint8_t> px(static_cast<size_t>(w * h * 3));
    for (size_t i = 0; i < px.size(); ++i) {
        px[i] = static_cast<uint8_t>(shade + (i * 7) % 40);
    }
    png_image image{};
    image.version = PNG_IMAGE_VERSION;
    image.width = static_cast<png_uint_32>(w);
    image.height = static_cast<png_uint_32>(h);
    image.format = PNG_FORMAT_RGB;
    std::filesystem::create_directories(path.parent_path());
    ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), 0, px.data(), 0, nullptr));
}

/// A fresh directory under the system temp dir, removed at the end of the test.
class TempDir {
public:
    TempDir() {
        std::random_device rd;
        path_ = std::filesystem::temp_directory_path() /
                ("pocketflow-test-" + std::to_string(rd()) + "-" + std::to_string(rd()));
        std::filesystem::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

/// Expects `fn` to throw an exception of type E whose message contains `needle`.
template <typename E, typename Fn>
void expect_error(Fn&& fn, const std::string& needle) {
    try {
        fn();
        ADD_FAILURE() << "expected an exception containing: " << needle;
    } catch (const E& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
            << "message: " << e.what() << "\nexpected to contain: " << needle;
    }
}

}  // namespace pocketflow::testing
