// SPDX-License-Identifier: Apache-2.0
// Data-parallel workers over c10d: TCPStore rendezvous, ProcessGroupGloo collectives, and a
// watchdog that turns a dead or hung worker into a clear error on the others (never a hang).
#include "pocketflow/distributed.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/version.h>
#include <unistd.h>

#include "pocketflow/error.h"
#include "pocketflow/model.h"
#include "pocketflow/pfm.h"
#include "pocketflow/util.h"

namespace pocketflow::dist {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

std::chrono::milliseconds to_ms(double seconds) {
    return milliseconds(static_cast<int64_t>(seconds * 1000));
}

std::string to_string(const std::vector<uint8_t>& v) {
    return std::string(v.begin(), v.end());
}

std::vector<uint8_t> to_bytes(const std::string& s) {
    return std::vector<uint8_t>(s.begin(), s.end());
}

std::string host_name() {
    char buf[256] = {};
    return ::gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : std::string("?");
}

/// Whether process `pid` of this machine is gone (or a zombie nobody reaped yet).
bool local_process_gone(int64_t pid) {
    if (pid <= 0) {
        return false;
    }
    if (::kill(static_cast<pid_t>(pid), 0) != 0) {
        return errno == ESRCH;
    }
    std::ifstream stat(fmt::format("/proc/{}/stat", pid));
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

/// What a worker posts about itself at init (`info/<rank>`): "pid P on host H".
struct Peer {
    std::string info;
    std::string host;
    int64_t pid = 0;
    int64_t beat = -1;
    Clock::time_point changed = Clock::now();

    void describe(std::string text) {
        info = std::move(text);
        const auto at = info.find(" on host ");
        pid = std::atoll(info.c_str() + 4);
        host = at == std::string::npos ? "" : info.substr(at + 9);
    }
};

struct State {
    World world;
    Options options;
    c10::intrusive_ptr<c10d::Store> store;  // the main thread's client (rank 0: the server)
    c10::intrusive_ptr<c10d::Store> watch;  // the watchdog's own connection
    c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
    std::thread watchdog;
    std::atomic<bool> stopping{false};
    int64_t once_calls = 0;
    std::string host;
};

std::unique_ptr<State> g_state;
thread_local bool t_in_once = false;

[[noreturn]] void die(const std::string& message) {
    spdlog::error("{}", message);
    spdlog::default_logger()->flush();
    std::_Exit(1);
}

std::string address(const State& s) {
    return fmt::format("{}:{}", s.world.master_addr, s.world.master_port);
}

/// Every second: bump this worker's heartbeat, read the others'; a worker that failed, whose
/// process is gone (same machine) or whose heartbeat stopped for dead_after_s ends this one.
void watchdog_loop(State* s) {
    std::vector<Peer> peers(static_cast<size_t>(s->world.world_size));
    const auto period = milliseconds(500);
    auto last_round = Clock::now();
    while (!s->stopping.load()) {
        try {
            // A long gap in this loop (this process was stopped, or starved of CPU) says nothing
            // about the others: their silence is measured from now on.
            if (Clock::now() - last_round > 4 * period) {
                for (Peer& p : peers) {
                    p.changed = Clock::now();
                }
            }
            last_round = Clock::now();
            s->watch->add(fmt::format("hb/{}", s->world.rank), 1);
            for (int r = 0; r < s->world.world_size; ++r) {
                if (r == s->world.rank) {
                    continue;
                }
                Peer& p = peers[static_cast<size_t>(r)];
                if (s->watch->check({fmt::format("fail/{}", r)})) {
                    die(fmt::format("rank {} failed: {}", r,
                                    to_string(s->watch->get(fmt::format("fail/{}", r)))));
                }
                if (s->watch->add(fmt::format("done/{}", r), 0) > 0) {
                    continue;
                }
                if (p.info.empty() && s->watch->check({fmt::format("info/{}", r)})) {
                    p.describe(to_string(s->watch->get(fmt::format("info/{}", r))));
                }
                const int64_t beat = s->watch->add(fmt::format("hb/{}", r), 0);
                const auto now = Clock::now();
                if (beat != p.beat) {
                    p.beat = beat;
                    p.changed = now;
                }
                const std::string who = p.info.empty() ? fmt::format("rank {}", r)
                                                       : fmt::format("rank {} ({})", r, p.info);
                if (!p.info.empty() && p.host == s->host && local_process_gone(p.pid)) {
                    die(fmt::format("{} exited or was killed; stopping this worker (rank {})", who,
                                    s->world.rank));
                }
                const double quiet = std::chrono::duration<double>(now - p.changed).count();
                if (quiet > s->options.dead_after_s) {
                    die(
                        fmt::format("{} stopped responding: no heartbeat for {:.0f} s (dead, "
                                    "hung or unreachable); stopping this worker (rank {})",
                                    who, quiet, s->world.rank));
                }
            }
        } catch (const std::exception& e) {
            if (s->stopping.load()) {
                return;
            }
            die(
                fmt::format("lost the rendezvous store at {} (hosted by rank 0): rank 0 exited, "
                            "hangs or is unreachable; stopping this worker (rank {}): {}",
                            address(*s), s->world.rank, shorten(e.what(), 300)));
        }
        std::this_thread::sleep_for(period);
    }
}

c10::intrusive_ptr<c10d::Store> connect(const World& w, bool server, double timeout_s) {
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(w.master_port);
    o.isServer = server;
    o.numWorkers = w.world_size;
    o.waitWorkers = false;
    o.timeout = to_ms(timeout_s);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    // LibTorch 2.4+ asks for the libuv store backend by default, which a LibTorch built without
    // libuv (Debian 13's) refuses: the classic backend speaks the same protocol.
    try {
        return c10::make_intrusive<c10d::TCPStore>(w.master_addr, o);
    } catch (const c10::Error& e) {
        if (!o.useLibUV || std::string(e.what()).find("libuv") == std::string::npos) {
            throw;
        }
        o.useLibUV = false;
    }
#endif
    return c10::make_intrusive<c10d::TCPStore>(w.master_addr, o);
}

int env_int(const char* name, int fallback, int min, int max) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
        return fallback;
    }
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(v, &end, 10);
    PF_CHECK(errno == 0 && end != v && *end == '\0' && n >= min && n <= max, ConfigError,
             "environment variable {}='{}': expected an integer in [{}, {}]", name, shorten(v, 80),
             min, max);
    return static_cast<int>(n);
}

double env_seconds(const char* name, double fallback) {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') {
        return fallback;
    }
    char* end = nullptr;
    const double x = std::strtod(v, &end);
    PF_CHECK(end != v && *end == '\0' && x >= 1 && x <= 86400, ConfigError,
             "environment variable {}='{}': expected seconds in [1, 86400]", name, shorten(v, 80));
    return x;
}

}  // namespace

Options options_from_environment() {
    Options o;
    o.dead_after_s = env_seconds("POCKETFLOW_DEAD_AFTER", o.dead_after_s);
    o.collective_timeout_s = env_seconds("POCKETFLOW_COLLECTIVE_TIMEOUT", o.collective_timeout_s);
    o.rendezvous_timeout_s = env_seconds("POCKETFLOW_RENDEZVOUS_TIMEOUT", o.rendezvous_timeout_s);
    return o;
}

std::optional<World> world_from_environment() {
    // torchrun first, then Open MPI, then Slurm: the first launcher whose size variable is set.
    struct Contract {
        const char *rank, *size, *local_rank, *local_size;
    };
    const Contract contracts[] = {
        {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
        {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
         "OMPI_COMM_WORLD_LOCAL_SIZE"},
        {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"},
    };
    for (const Contract& c : contracts) {
        const char* size = std::getenv(c.size);
        if (size == nullptr || *size == '\0') {
            continue;
        }
        World w;
        w.world_size = env_int(c.size, 1, 1, 1 << 20);
        if (w.world_size == 1) {
            return std::nullopt;
        }
        PF_CHECK(std::getenv(c.rank) != nullptr, ConfigError,
                 "environment variable {}={} is set but {} is not: a launcher sets both", c.size,
                 w.world_size, c.rank);
        w.rank = env_int(c.rank, 0, 0, w.world_size - 1);
        w.local_rank = env_int(c.local_rank, w.rank, 0, w.world_size - 1);
        // Slurm's tasks-per-node may read "2(x3)"; only a plain number is taken.
        const char* ls = std::getenv(c.local_size);
        const bool plain = ls != nullptr && *ls != '\0' &&
                           std::string(ls).find_first_not_of("0123456789") == std::string::npos;
        w.local_world_size =
            plain ? env_int(c.local_size, w.world_size, 1, w.world_size) : w.world_size;
        PF_CHECK(w.local_rank < w.local_world_size, ConfigError,
                 "environment variables {}={} and {}={} disagree: the local rank must be below "
                 "the local world size",
                 c.local_rank, w.local_rank, c.local_size, w.local_world_size);
        const char* addr = std::getenv("MASTER_ADDR");
        if (addr != nullptr && *addr != '\0') {
            w.master_addr = addr;
        }
        w.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
        return w;
    }
    return std::nullopt;
}

void init(const World& world, const Options& options) {
    PF_CHECK(!g_state, Error, "dist::init called twice");
    PF_CHECK(world.world_size > 1 && world.rank >= 0 && world.rank < world.world_size, Error,
             "dist::init: rank {} of {} workers", world.rank, world.world_size);
    auto s = std::make_unique<State>();
    s->world = world;
    s->options = options;
    s->host = host_name();
    const std::string where = address(*s);
    spdlog::info("rank {} of {}: joining the workers at {}", world.rank, world.world_size, where);
    try {
        s->store = connect(world, world.rank == 0, options.rendezvous_timeout_s);
        s->watch = connect(world, false, 10);
        s->store->set(fmt::format("info/{}", world.rank),
                      to_bytes(fmt::format("pid {} on host {}", ::getpid(), s->host)));
        // Everyone here before the group forms: a missing worker is named, not waited for
        // forever.
        s->store->add("joined", 1);
        const auto deadline = Clock::now() + to_ms(options.rendezvous_timeout_s);
        while (s->store->add("joined", 0) < world.world_size) {
            PF_CHECK(Clock::now() < deadline, Error,
                     "rendezvous at {}: {} of {} workers arrived within {:.0f} s", where,
                     s->store->add("joined", 0), world.world_size, options.rendezvous_timeout_s);
            std::this_thread::sleep_for(milliseconds(50));
        }
        auto opts = c10d::ProcessGroupGloo::Options::create(to_ms(options.collective_timeout_s));
        const char* iface = std::getenv("GLOO_SOCKET_IFNAME");
        if (iface != nullptr && *iface != '\0') {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
        } else if (world.master_addr == "127.0.0.1" || world.master_addr == "localhost") {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        } else {
            opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        opts->threads = 1;  // the collectives' own thread; the cores belong to training
        auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", s->store);
        s->group = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, world.rank,
                                                               world.world_size, opts);
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        throw Error(fmt::format("failed to join the workers at {} as rank {} of {}: {}", where,
                                world.rank, world.world_size, shorten(e.what(), 500)));
    }
    State* raw = s.get();
    s->watchdog = std::thread([raw] { watchdog_loop(raw); });
    g_state = std::move(s);
    spdlog::info("rank {} of {}: {} workers joined (Gloo)", world.rank, world.world_size,
                 world.world_size);
}

void finish(const std::string& failure) {
    if (!g_state) {
        return;
    }
    State& s = *g_state;
    s.stopping = true;
    if (s.watchdog.joinable()) {
        s.watchdog.join();
    }
    try {
        if (!failure.empty()) {
            s.store->set(fmt::format("fail/{}", s.world.rank), to_bytes(shorten(failure, 2000)));
        }
        s.store->add(fmt::format("done/{}", s.world.rank), 1);
        if (s.world.rank == 0) {
            // The store lives in this process: keep it until the others have left (they finish
            // without the final evaluation, so they are normally gone already; after a failure
            // their watchdogs read it from the store within a second). A worker that failed or
            // whose process is gone is not waited for.
            const auto deadline = Clock::now() + std::chrono::seconds(failure.empty() ? 60 : 5);
            for (int r = 1; r < s.world.world_size && Clock::now() < deadline; ++r) {
                while (s.store->add(fmt::format("done/{}", r), 0) == 0 &&
                       !s.store->check({fmt::format("fail/{}", r)}) && Clock::now() < deadline) {
                    Peer peer;
                    peer.describe(to_string(s.store->get(fmt::format("info/{}", r))));
                    if (peer.host == s.host && local_process_gone(peer.pid)) {
                        break;
                    }
                    std::this_thread::sleep_for(milliseconds(50));
                }
            }
        }
    } catch (const std::exception& e) {
        spdlog::debug("leaving the workers: {}", e.what());
    }
    g_state.reset();
}

bool active() {
    return g_state != nullptr && !t_in_once;
}

int rank() {
    return g_state ? g_state->world.rank : 0;
}

int world_size() {
    return active() ? g_state->world.world_size : 1;
}

int local_world_size() {
    return g_state ? g_state->world.local_world_size : 1;
}

bool is_main() {
    return rank() == 0;
}

namespace {

/// Runs a collective; a failure other than ours (a peer's connection closed) waits for the
/// watchdog, which names a dead peer and ends this process within dead_after_s, else is thrown
/// as an Error naming the operation.
template <typename Body>
void collective(const char* op, Body&& body) {
    try {
        body();
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        const double wait = g_state ? g_state->options.dead_after_s + 3 : 0;
        std::this_thread::sleep_for(to_ms(wait));
        throw Error(fmt::format("{} among the workers failed (rank {}): {}", op, rank(),
                                shorten(e.what(), 500)));
    }
}

/// The tensors flattened into one buffer, in order (Gloo wants dense contiguous tensors;
/// channels-last weights are reordered by reshape like the rest).
at::Tensor pack(const std::vector<at::Tensor>& members) {
    std::vector<at::Tensor> parts;
    for (const auto& t : members) {
        parts.push_back(t.reshape({-1}));
    }
    return at::cat(parts);
}

/// pack's inverse: the buffer's values copied back into the tensors.
void unpack(const at::Tensor& flat, const std::vector<at::Tensor>& members) {
    int64_t offset = 0;
    for (const auto& t : members) {
        t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
        offset += t.numel();
    }
}

}  // namespace

void broadcast(std::vector<at::Tensor> tensors) {
    if (!active() || tensors.empty()) {
        return;
    }
    collective("broadcast", [&] {
        std::map<at::ScalarType, std::vector<at::Tensor>> by_type;  // one buffer per dtype
        for (auto& t : tensors) {
            by_type[t.scalar_type()].push_back(t);
        }
        for (auto& [type, members] : by_type) {
            // Gloo has no bool: masks (weight_sparsification's) travel as bytes.
            std::vector<at::Tensor> one{type == at::kBool ? pack(members).to(at::kByte)
                                                          : pack(members)};
            g_state->group->broadcast(one)->wait();
            unpack(one[0], members);
        }
    });
}

void all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
    if (!active() || tensors.empty()) {
        return;
    }
    // Buckets of same-dtype tensors, flattened; each bucket's all-reduce runs on Gloo's thread
    // while the next one is packed.
    struct Bucket {
        std::vector<at::Tensor> members;
        at::Tensor flat;
        c10::intrusive_ptr<c10d::Work> work;
    };
    collective("all-reduce", [&] {
        std::vector<Bucket> buckets;
        auto launch = [&](Bucket& b) {
            b.flat = pack(b.members);
            std::vector<at::Tensor> one{b.flat};
            b.work = g_state->group->allreduce(one);
            buckets.push_back(std::move(b));
            b = Bucket();
        };
        Bucket current;
        int64_t bytes = 0;
        for (const auto& t : tensors) {
            const int64_t size = t.numel() * static_cast<int64_t>(t.element_size());
            if (!current.members.empty() &&
                (bytes + size > bucket_bytes ||
                 current.members.front().scalar_type() != t.scalar_type())) {
                launch(current);
                bytes = 0;
            }
            current.members.push_back(t);
            bytes += size;
        }
        launch(current);
        for (auto& b : buckets) {
            b.work->wait();
            unpack(b.flat, b.members);
        }
    });
}

std::string broadcast_bytes(const std::string& bytes) {
    if (!active()) {
        return bytes;
    }
    at::Tensor size = at::tensor({static_cast<int64_t>(bytes.size())}, at::kLong);
    broadcast({size});
    const int64_t n = size.item<int64_t>();
    at::Tensor data = at::empty({std::max<int64_t>(n, 1)}, at::kByte);
    if (rank() == 0 && n > 0) {
        std::memcpy(data.data_ptr(), bytes.data(), static_cast<size_t>(n));
    }
    broadcast({data});
    return std::string(reinterpret_cast<const char*>(data.data_ptr()), static_cast<size_t>(n));
}

void broadcast_model(std::shared_ptr<Model>& model) {
    if (!active()) {
        return;
    }
    const std::string bytes =
        broadcast_bytes(rank() == 0 ? encode_model(model->graph(), model->meta()) : "");
    if (rank() != 0) {
        ModelFile file = decode_model(bytes, "the model of rank 0");
        const bool training = model->is_training();
        model = std::make_shared<Model>(std::move(file.graph), file.meta);
        if (training) {
            model->train();
        } else {
            model->eval();
        }
    }
}

void broadcast_weights(Model& model) {
    if (!active()) {
        return;
    }
    std::vector<at::Tensor> tensors;
    for (auto& n : model.graph().nodes()) {
        for (auto& [key, t] : n.params) {
            tensors.push_back(t);
        }
        for (auto& [key, t] : n.buffers) {
            tensors.push_back(t);
        }
    }
    at::NoGradGuard no_grad;
    broadcast(tensors);
}

namespace {

std::atomic<bool> g_sync_bn{false};

/// An all-reduce (sum) that autograd sees through: the gradient of every worker's copy of the
/// sum reaches every worker's input, so the backward pass all-reduces the incoming gradients.
struct AllReduceSum : public torch::autograd::Function<AllReduceSum> {
    static at::Tensor forward(torch::autograd::AutogradContext* /*ctx*/, const at::Tensor& x) {
        at::Tensor y = x.clone();
        all_reduce_sum({y});
        return y;
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* /*ctx*/,
                                                   torch::autograd::variable_list grads) {
        at::Tensor g = grads[0].clone();
        all_reduce_sum({g});
        return {g};
    }
};

}  // namespace

void set_sync_batch_norm(bool on) {
    g_sync_bn = on;
}

bool sync_batch_norm() {
    return g_sync_bn.load() && active();
}

at::Tensor sync_batch_norm(const at::Tensor& x,
                           const at::Tensor& weight,
                           const at::Tensor& bias,
                           const at::Tensor& running_mean,
                           const at::Tensor& running_var,
                           double momentum,
                           double eps) {
    const int64_t c = x.size(1);
    const std::vector<int64_t> dims{0, 2, 3};
    // [sum, sum of squares, count] per channel, summed over the workers in one all-reduce.
    const at::Tensor count = at::full({1, c}, static_cast<double>(x.numel() / c), x.options());
    at::Tensor stats = at::cat({x.sum(dims).unsqueeze(0), (x * x).sum(dims).unsqueeze(0), count});
    stats = AllReduceSum::apply(stats);
    const at::Tensor n = stats[2];
    const at::Tensor mean = stats[0] / n;
    const at::Tensor var = (stats[1] / n - mean * mean).clamp_min(0);
    {
        at::NoGradGuard no_grad;
        const double total = n[0].item<double>();
        running_mean.mul_(1 - momentum).add_(mean.detach(), momentum);
        running_var.mul_(1 - momentum)
            .add_(var.detach() * (total / std::max(total - 1, 1.0)), momentum);
    }
    const at::Tensor scale = weight * at::rsqrt(var + eps);
    const at::Tensor shift = bias - mean * scale;
    return at::addcmul(shift.view({1, c, 1, 1}), x, scale.view({1, c, 1, 1}));
}

std::string run_once(const std::function<std::string()>& work) {
    if (!active()) {
        return work();
    }
    State& s = *g_state;
    const int64_t call = s.once_calls++;
    const std::string key = fmt::format("once/{}", call);
    if (s.world.rank == 0) {
        std::string result;
        t_in_once = true;
        try {
            result = work();
        } catch (const std::exception& e) {
            t_in_once = false;
            s.store->set(key + "/error", to_bytes(shorten(e.what(), 2000)));
            throw;
        }
        t_in_once = false;
        s.store->set(key, to_bytes(result));
        return result;
    }
    // The other workers wait as long as rank 0 works; the watchdog ends this process if rank 0
    // dies meanwhile.
    while (true) {
        if (s.store->check({key})) {
            return to_string(s.store->get(key));
        }
        if (s.store->check({key + "/error"})) {
            throw Error(fmt::format("rank 0 failed in work done for every worker: {}",
                                    to_string(s.store->get(key + "/error"))));
        }
        if (stop_requested()) {
            throw Interrupted(
                fmt::format("rank {} interrupted while rank 0 worked for all", s.world.rank));
        }
        std::this_thread::sleep_for(milliseconds(100));
    }
}

}  // namespace pocketflow::dist
