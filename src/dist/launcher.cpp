// SPDX-License-Identifier: Apache-2.0
// `--nproc N`: N local workers of this program under torchrun's environment contract.
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pocketflow/distributed.h"
#include "pocketflow/error.h"

namespace pocketflow {

namespace {

std::atomic<int> g_forward_signal{0};

void on_launcher_signal(int sig) {
    g_forward_signal = sig;
}

/// A TCP port free on the loopback interface now (the kernel's choice).
int free_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    PF_CHECK(fd >= 0, IoError, "--nproc: no socket for a free port: {}", std::strerror(errno));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
                    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0;
    ::close(fd);
    PF_CHECK(ok, IoError, "--nproc: no free port on 127.0.0.1: {}", std::strerror(errno));
    return ntohs(addr.sin_port);
}

std::string describe_status(int status) {
    if (WIFEXITED(status)) {
        return fmt::format("exited with code {}", WEXITSTATUS(status));
    }
    if (WIFSIGNALED(status)) {
        return fmt::format("was killed by signal {} ({})", WTERMSIG(status),
                           ::strsignal(WTERMSIG(status)));
    }
    return "stopped";
}

int exit_code_of(int status) {
    return WIFEXITED(status) ? WEXITSTATUS(status)
                             : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

}  // namespace

int launch_local_workers(int nproc, const std::vector<std::string>& argv) {
    PF_CHECK(nproc >= 1 && nproc <= 1024, ConfigError, "--nproc {}: expected 1 to 1024", nproc);
    const unsigned cores = std::thread::hardware_concurrency();
    if (cores > 0 && static_cast<unsigned>(nproc) > cores) {
        spdlog::warn(
            "--nproc {} on {} cores: every worker still takes a thread, so the cores are "
            "oversubscribed (expect each to run far slower)",
            nproc, cores);
    }
    const int port = free_port();
    spdlog::info("starting {} workers (c10d Gloo, MASTER_ADDR=127.0.0.1 MASTER_PORT={})", nproc,
                 port);
    struct sigaction sa {};
    sa.sa_handler = on_launcher_signal;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    const pid_t launcher = ::getpid();
    std::vector<pid_t> pids(static_cast<size_t>(nproc), -1);
    for (int r = 0; r < nproc; ++r) {
        const pid_t pid = ::fork();
        PF_CHECK(pid >= 0, IoError, "--nproc: fork failed: {}", std::strerror(errno));
        if (pid == 0) {
            // The worker: its own process group (a terminal's Ctrl-C reaches the launcher, which
            // forwards it once), and SIGTERM when the launcher dies.
            ::setpgid(0, 0);
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != launcher) {
                ::_exit(1);
            }
            ::setenv("RANK", std::to_string(r).c_str(), 1);
            ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
            ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
            ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
            ::setenv("MASTER_ADDR", "127.0.0.1", 1);
            ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
            std::vector<char*> args;
            for (const auto& a : argv) {
                args.push_back(const_cast<char*>(a.c_str()));
            }
            args.push_back(nullptr);
            ::execv("/proc/self/exe", args.data());
            std::fprintf(stderr, "--nproc: failed to start worker %d: %s\n", r,
                         std::strerror(errno));
            ::_exit(127);
        }
        pids[static_cast<size_t>(r)] = pid;
        spdlog::debug("rank {}: pid {}", r, pid);
    }
    auto rank_of = [&](pid_t pid) {
        for (size_t r = 0; r < pids.size(); ++r) {
            if (pids[r] == pid) {
                return static_cast<int>(r);
            }
        }
        return -1;
    };
    int running = nproc, first_code = 0, rank0_code = 0;
    bool failed = false;
    std::chrono::steady_clock::time_point failed_at;
    bool terminated = false, killed = false;
    while (running > 0) {
        if (const int sig = g_forward_signal.exchange(0)) {
            for (pid_t p : pids) {
                if (p > 0) {
                    ::kill(p, sig);
                }
            }
        }
        int status = 0;
        const pid_t pid = ::waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            const int r = rank_of(pid);
            if (r < 0) {
                continue;
            }
            pids[static_cast<size_t>(r)] = -1;
            --running;
            const int code = exit_code_of(status);
            if (r == 0) {
                rank0_code = code;
            }
            if (code != 0) {
                if (!failed) {
                    failed = true;
                    first_code = code;
                    failed_at = std::chrono::steady_clock::now();
                    if (code == 130) {  // interrupted: every worker stops at the same step
                        spdlog::debug("rank {} (pid {}) was interrupted", r, pid);
                    } else {
                        spdlog::error("rank {} (pid {}) {}; the other workers stop within 60 s", r,
                                      pid, describe_status(status));
                    }
                } else {
                    spdlog::debug("rank {} (pid {}) {}", r, pid, describe_status(status));
                }
            }
            continue;
        }
        if (failed) {
            // The others' watchdogs end them; whatever still runs after 60 s is stopped here.
            const double since =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - failed_at).count();
            const int sig = since > 65 ? SIGKILL : since > 60 ? SIGTERM : 0;
            if (sig != 0 && !(sig == SIGTERM ? terminated : killed)) {
                (sig == SIGTERM ? terminated : killed) = true;
                for (size_t r = 0; r < pids.size(); ++r) {
                    if (pids[r] > 0) {
                        spdlog::error("rank {} (pid {}) still runs: sending {}", r, pids[r],
                                      ::strsignal(sig));
                        ::kill(pids[r], sig);
                    }
                }
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // Rank 0's code when it failed (a bad job fails every worker alike, and the others' exit 1
    // only says that rank 0 stopped), else the first failure's.
    return rank0_code != 0 ? rank0_code : first_code;
}

}  // namespace pocketflow
