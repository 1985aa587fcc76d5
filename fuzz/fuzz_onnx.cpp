// SPDX-License-Identifier: Apache-2.0
// Fuzz target: an ONNX model file through the importer (protobuf parsing, initializers, every op's
// attributes, the graph checks), then the per-layer counts `info` shows.
#include "pocketflow/onnx.h"

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace pocketflow;
    fuzz::quiet();
    const std::string path = fuzz::scratch(".onnx");
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    write_file_atomic(path, bytes);
    fuzz::expect_clean(bytes, [&] { import_onnx(path).graph.layer_stats(); });
    return 0;
}
