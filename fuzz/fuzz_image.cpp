// SPDX-License-Identifier: Apache-2.0
// Fuzz target: image decoding (libpng, libjpeg-turbo) behind the size checks; the first byte picks
// the format.
#include "pocketflow/data.h"

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace pocketflow;
    fuzz::quiet();
    if (size < 1) {
        return 0;
    }
    const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    fuzz::expect_clean(bytes, [&] { decode_image(data[0] % 2 ? "x.png" : "x.jpg", bytes); });
    return 0;
}
