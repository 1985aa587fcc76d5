// SPDX-License-Identifier: Apache-2.0
// What the fuzz targets share: quiet logs, one thread, a scratch file, and the rule they enforce:
// hostile input may only end in the project's own error (a message for the user), never in a
// crash, a foreign exception, or a message carrying a library's internal text.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "pocketflow/error.h"
#include "pocketflow/util.h"

namespace pocketflow::fuzz {

inline void quiet() {
    static const bool once = [] {
        spdlog::set_level(spdlog::level::off);
        at::set_num_threads(1);
        return true;
    }();
    (void)once;
}

/// A scratch path of this process (tmpfs when there is one), with `suffix`.
inline std::string scratch(const std::string& suffix) {
    static const std::string dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return dir + "/pocketflow-fuzz-" + std::to_string(getpid()) + suffix;
}

/// Runs `fn` on `input`; a pocketflow::Error is the expected outcome of bad input, unless its
/// message carries a library's internal text that the input itself does not contain (then abort:
/// libFuzzer keeps the input). Any other exception escapes and libFuzzer reports it.
template <typename Fn>
void expect_clean(const std::string& input, Fn&& fn) {
    try {
        fn();
    } catch (const Error& e) {
        const std::string m = e.what();
        auto leaked = [&](const std::string& text) {
            return m.find(text) != std::string::npos && input.find(text) == std::string::npos;
        };
        auto ends_with = [&](const std::string& tail) {
            return m.size() >= tail.size() &&
                   m.compare(m.size() - tail.size(), tail.size(), tail) == 0 &&
                   input.find(tail) == std::string::npos;
        };
        bool leak = ends_with("stod") || ends_with("stoi") || ends_with("stol") ||
                    ends_with("stoll") || ends_with("stoul") || ends_with("stof");
        for (const char* text : {"[json.exception", "yaml-cpp", "bad conversion", "basic_string",
                                 "::", "bad_alloc", "length_error"}) {
            leak = leak || leaked(text);
        }
        if (leak) {
            std::fprintf(stderr, "internal text in an error message: %s\n", e.what());
            std::abort();
        }
        if (m.size() > 4000) {
            std::fprintf(stderr, "an error message of %zu characters\n", m.size());
            std::abort();
        }
    }
}

}  // namespace pocketflow::fuzz
