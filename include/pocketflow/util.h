// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace pocketflow {

/// Writes `data` to `path` atomically: a temporary file beside it, fsync, then rename. A reader
/// sees the old file or the new one, never a torn one. Throws IoError.
void write_file_atomic(const std::filesystem::path& path, std::string_view data);

/// Removes the "<file>.tmp.<pid>" files write_file_atomic's of processes that are gone left in
/// `dir` (and, with `recursive`, below it): a process killed while writing. Returns how many.
int remove_stale_temp_files(const std::filesystem::path& dir, bool recursive);

/// Reads a whole file; throws InputError naming the path when it cannot.
std::string read_file(const std::filesystem::path& path);

/// Levenshtein distance, for "did you mean" suggestions.
size_t edit_distance(std::string_view a, std::string_view b);

/// The candidate closest to `word` when it is close enough to be a likely typo, else "".
std::string nearest_match(std::string_view word, const std::vector<std::string>& candidates);

/// Joins strings with a separator.
std::string join(const std::vector<std::string>& parts, std::string_view sep);

/// CRC-32 (zlib's polynomial) of a byte range, continuing from `crc`.
uint32_t crc32_update(uint32_t crc, const void* data, size_t size);

/// Local time as 20261128-071500, for run directory names.
std::string timestamp_now();

/// Number of threads to use for `requested` (0 means all hardware threads).
int resolve_threads(int requested);

/// Human-readable count: 40.81M, 1.81G, 61.7K.
std::string human_count(double value);

/// Human-readable bytes: 1.2 MiB.
std::string human_bytes(double bytes);

/// `text` for a message: at most `max` characters, the middle elided ("abc…xyz") — a hostile
/// megabyte-long value must not be repeated in full.
std::string shorten(const std::string& text, size_t max = 160);

/// `text` as one shell word (single-quoted), whatever it holds.
std::string shell_quote(const std::string& text);

/// A fresh private directory under the system temp dir, removed with everything in it on scope
/// exit.
class ScopedTempDir {
public:
    explicit ScopedTempDir(const std::string& prefix);
    ~ScopedTempDir();
    ScopedTempDir(const ScopedTempDir&) = delete;
    ScopedTempDir& operator=(const ScopedTempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

/// Parses "3x32x32" (sep 'x') or "1,64" (sep ',') into positive integers at most `max`; throws
/// ConfigError naming `what` (the option) otherwise.
std::vector<int64_t> parse_positive_ints(const std::string& text,
                                         char sep,
                                         int64_t max,
                                         const std::string& what);

/// Installs SIGINT/SIGTERM handlers that set a flag instead of killing the process, so long work
/// can save a checkpoint and stop cleanly. A second signal restores the default and kills.
void install_stop_handlers();
/// True once a stop was requested by a signal.
bool stop_requested();
/// Sets or clears the flag a signal sets (tests: a stop at a chosen point, deterministically).
void set_stop_request(bool stop);

}  // namespace pocketflow
