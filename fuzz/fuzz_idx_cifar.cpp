// SPDX-License-Identifier: Apache-2.0
// Fuzz target: dataset files. The first byte picks the reader — IDX images + labels (the input
// split in two at a position from the next two bytes; gzip when the bytes say so) or a CIFAR-10 /
// CIFAR-100 test batch — and every image of the result is read.
#include <filesystem>

#include "pocketflow/data.h"

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace pocketflow;
    fuzz::quiet();
    if (size < 3) {
        return 0;
    }
    const int mode = data[0] % 3;
    std::string rest(reinterpret_cast<const char*>(data) + 3, size - 3);
    fuzz::expect_clean(rest, [&] {
        std::shared_ptr<Dataset> d;
        if (mode == 0) {
            const size_t cut = std::min(rest.size(), static_cast<size_t>(data[1] | (data[2] << 8)));
            const std::string images = fuzz::scratch("-images"), labels = fuzz::scratch("-labels");
            write_file_atomic(images, rest.substr(0, cut));
            write_file_atomic(labels, rest.substr(cut));
            d = load_idx(images, labels, 64);
        } else {
            const std::filesystem::path dir = fuzz::scratch("-cifar");
            std::filesystem::create_directories(dir);
            write_file_atomic(dir / (mode == 1 ? "test_batch.bin" : "test.bin"), rest);
            d = load_cifar(dir.string(), mode == 2, false, 64);
        }
        for (int64_t i = 0; i < std::min<int64_t>(d->size(), 64); ++i) {
            d->get(i);
            d->label(i);
        }
    });
    return 0;
}
