// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace pocketflow {

/// The CPU a compressed model is meant to run on, as far as its shapes matter: vectorised
/// convolution kernels (ONNX Runtime's NCHWc, oneDNN, XNNPACK) process channels in blocks of the
/// SIMD width in floats, and a channel count off that block falls back to slower kernels — a
/// model pruned to odd counts can run slower than its unpruned parent (docs/performance.md).
///
/// Example:
///   CpuTarget t = cpu_target("native");  // on an AVX-512 machine: {"avx512", 16, ...}
///   int64_t block = t.channel_block;
struct CpuTarget {
    std::string name;           ///< avx512vnni | avx512 | avx2 | neon | generic
    int64_t channel_block = 1;  ///< channels per SIMD register (float32)
    std::string description;    ///< for logs: what was detected or named
    /// Whether int8 kernels accumulate u8×s8 products in 32 bits (x86 VNNI; ARM): without it
    /// x86 kernels add pairs of products in saturating 16 bits, so 8-bit weights must stay
    /// within ±63 (quant.h).
    bool int8_exact = false;
};

/// Resolves a target name: "native" detects this machine's widest SIMD; the others name a
/// deployment CPU. Throws std::invalid_argument for an unknown name (callers
/// validate against cpu_target_names()).
CpuTarget cpu_target(const std::string& name);

/// The names cpu_target accepts: native, avx512vnni, avx512, avx2, neon, generic.
std::vector<std::string> cpu_target_names();

}  // namespace pocketflow
