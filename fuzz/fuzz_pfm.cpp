// SPDX-License-Identifier: Apache-2.0
// Fuzz target: a .pfm model file. The checksum would reject almost every mutation before the
// parser sees it, so the input's last 4 bytes are replaced by the right CRC-32 when the first byte
// is even: both the checksum and everything behind it get exercised.
// A file that loads also has its per-layer counts (what `info` shows) taken.
#include <cstring>

#include "pocketflow/pfm.h"

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace pocketflow;
    fuzz::quiet();
    std::string bytes(reinterpret_cast<const char*>(data), size);
    if (bytes.size() >= 8 && (static_cast<uint8_t>(bytes[0]) % 2 == 0 || bytes[0] == 'P')) {
        const uint32_t crc = crc32_update(0, bytes.data(), bytes.size() - 4);
        std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
    }
    const std::string path = fuzz::scratch(".pfm");
    write_file_atomic(path, bytes);
    fuzz::expect_clean(bytes, [&] { load_model(path).graph.layer_stats(); });
    return 0;
}
