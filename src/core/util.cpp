// SPDX-License-Identifier: Apache-2.0
#include "pocketflow/util.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <thread>

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <zlib.h>

#include "pocketflow/error.h"

namespace pocketflow {

namespace fs = std::filesystem;

int remove_stale_temp_files(const fs::path& dir, bool recursive) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
        return 0;
    }
    int removed = 0;
    auto consider = [&](const fs::directory_entry& e) {
        const std::string name = e.path().filename().string();
        const auto at = name.rfind(".tmp.");
        std::error_code type_error;
        if (at == std::string::npos || !e.is_regular_file(type_error)) {
            return;
        }
        const std::string pid_text = name.substr(at + 5);
        if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos ||
            pid_text.size() > 9) {
            return;
        }
        const pid_t pid = static_cast<pid_t>(std::stol(pid_text));
        std::error_code remove_error;
        if (pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH &&
            fs::remove(e.path(), remove_error)) {
            spdlog::info("removed {}, left by an interrupted write", e.path().string());
            ++removed;
        }
    };
    if (recursive) {
        for (auto it = fs::recursive_directory_iterator(
                 dir, fs::directory_options::skip_permission_denied, ec);
             !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
            consider(*it);
        }
    } else {
        for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator();
             it.increment(ec)) {
            consider(*it);
        }
    }
    return removed;
}

void write_file_atomic(const fs::path& path, std::string_view data) {
    if (path.has_parent_path()) {
        std::error_code ec;
        fs::create_directories(path.parent_path(), ec);
        PF_CHECK(!ec, IoError, "failed to create directory {}: {}", path.parent_path().string(),
                 ec.message());
    }
    fs::path tmp = path;
    tmp += ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    PF_CHECK(fd >= 0, IoError, "failed to write {}: {}", tmp.string(), std::strerror(errno));
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            int err = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw IoError(fmt::format("failed to write {}: {}", tmp.string(), std::strerror(err)));
        }
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        throw IoError(fmt::format("failed to write {}: {}", tmp.string(), std::strerror(err)));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        throw IoError(fmt::format("failed to rename {} to {}: {}", tmp.string(), path.string(),
                                  std::strerror(err)));
    }
}

std::string read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    PF_CHECK(in.good(), InputError, "failed to read {}: {}", path.string(),
             fs::exists(path) ? "cannot open" : "no such file");
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) {
        prev[j] = j;
    }
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string nearest_match(std::string_view word, const std::vector<std::string>& candidates) {
    std::string best;
    size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
    for (const auto& c : candidates) {
        size_t d = edit_distance(word, c);
        if (d < best_distance) {
            best_distance = d;
            best = c;
        }
    }
    return best;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
    std::string out;
    for (size_t i = 0; i < parts.size(); ++i) {
        if (i > 0) {
            out += sep;
        }
        out += parts[i];
    }
    return out;
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t size) {
    const auto* bytes = static_cast<const Bytef*>(data);
    uLong value = crc;
    while (size > 0) {
        auto chunk = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
        value = ::crc32(value, bytes, chunk);
        bytes += chunk;
        size -= chunk;
    }
    return static_cast<uint32_t>(value);
}

std::string timestamp_now() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
    return buf;
}

int resolve_threads(int requested) {
    if (requested > 0) {
        return requested;
    }
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
}

std::string human_count(double value) {
    const char* units[] = {"", "K", "M", "G", "T"};
    int u = 0;
    while (std::abs(value) >= 1000.0 && u < 4) {
        value /= 1000.0;
        ++u;
    }
    return u == 0 ? fmt::format("{:.0f}", value) : fmt::format("{:.2f}{}", value, units[u]);
}

std::string shell_quote(const std::string& text) {
    std::string out = "'";
    for (char c : text) {
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return out + "'";
}

std::string shorten(const std::string& text, size_t max) {
    if (text.size() <= max || max < 8) {
        return text;
    }
    const size_t head = (max - 3) / 2, tail = max - 3 - head;
    return text.substr(0, head) + "..." + text.substr(text.size() - tail) +
           fmt::format(" ({} characters)", text.size());
}

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        ++u;
    }
    return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

ScopedTempDir::ScopedTempDir(const std::string& prefix) {
    std::string pattern = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
    PF_CHECK(::mkdtemp(pattern.data()) != nullptr, IoError,
             "failed to create a temporary directory {}: {}", pattern, std::strerror(errno));
    path_ = pattern;
}

ScopedTempDir::~ScopedTempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
}

std::vector<int64_t> parse_positive_ints(const std::string& text,
                                         char sep,
                                         int64_t max,
                                         const std::string& what) {
    std::vector<int64_t> out;
    size_t start = 0;
    while (true) {
        size_t next = text.find(sep, start);
        std::string part =
            text.substr(start, next == std::string::npos ? std::string::npos : next - start);
        char* end = nullptr;
        long long v = std::strtoll(part.c_str(), &end, 10);
        PF_CHECK(!part.empty() && *end == '\0' && v > 0 && v <= max, ConfigError,
                 "{} {}: expected positive integers (at most {}) separated by '{}'", what, text,
                 max, sep);
        out.push_back(v);
        if (next == std::string::npos) {
            return out;
        }
        start = next + 1;
    }
}

namespace {
std::atomic<bool> g_stop{false};

void on_signal(int sig) {
    if (g_stop.exchange(true)) {
        std::signal(sig, SIG_DFL);
        std::raise(sig);
    }
}
}  // namespace

void install_stop_handlers() {
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
}

bool stop_requested() {
    return g_stop.load();
}

void set_stop_request(bool stop) {
    g_stop = stop;
}

}  // namespace pocketflow
