// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/cpu.h"

#include <stdexcept>

namespace pocketflow {

namespace {

CpuTarget named(const std::string& name, const std::string& description) {
    if (name == "avx512vnni") {
        return {name, 16, description, true};  // 16 floats per zmm register; vpdpbusd
    }
    if (name == "avx512") {
        return {name, 16, description, false};
    }
    if (name == "avx2") {
        return {name, 8, description, false};  // 8 floats per ymm register
    }
    if (name == "neon") {
        return {name, 4, description, true};  // 4 floats per q register; 32-bit accumulation
    }
    return {"generic", 4, description, false};  // SSE-class: 4 floats
}

}  // namespace

CpuTarget cpu_target(const std::string& name) {
    if (name != "native") {
        for (const auto& known : cpu_target_names()) {
            if (known == name) {
                return named(name, "target " + name);
            }
        }
        throw std::invalid_argument("unknown CPU target '" + name + "'");
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni")) {
        return named("avx512vnni", "this machine (AVX-512 VNNI)");
    }
    if (__builtin_cpu_supports("avx512f")) {
        return named("avx512", "this machine (AVX-512)");
    }
    if (__builtin_cpu_supports("avx2")) {
        return named("avx2", "this machine (AVX2)");
    }
    return named("generic", "this machine (SSE)");
#elif defined(__aarch64__) || defined(__ARM_NEON)
    return named("neon", "this machine (NEON)");
#else
    return named("generic", "this machine");
#endif
}

std::vector<std::string> cpu_target_names() {
    return {"native", "avx512vnni", "avx512", "avx2", "neon", "generic"};
}

}  // namespace pocketflow
