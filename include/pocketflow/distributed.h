// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace pocketflow {

class Model;

/// Data-parallel workers over PyTorch's c10d engine (docs/distributed.md): a TCPStore rendezvous
/// and ProcessGroupGloo (CPU). One process-wide group; everything here is a no-op (or the
/// identity) when no group is running, so single-process code calls it unconditionally.
///
/// Example (what `pocketflow train` does under torchrun or `--nproc N`):
///   if (auto world = dist::world_from_environment()) dist::init(*world);
///   ... Trainer::fit shards the data and averages gradients ...
///   dist::finish();
namespace dist {

/// Where this process stands in the job, from the launcher's environment.
struct World {
    int rank = 0, world_size = 1;
    int local_rank = 0, local_world_size = 1;  ///< workers on this machine
    std::string master_addr = "127.0.0.1";
    int master_port = 29500;
};

/// torchrun's contract: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT;
/// else Open MPI's OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK,LOCAL_SIZE} or Slurm's SLURM_{PROCID,
/// NTASKS,LOCALID} (with MASTER_ADDR/MASTER_PORT from the environment, default 127.0.0.1:29500).
/// nullopt when no launcher set WORLD_SIZE (or the MPI/Slurm size) above 1. ConfigError naming the
/// variable for a malformed or inconsistent value.
std::optional<World> world_from_environment();

struct Options {
    /// A collective (all-reduce, broadcast) not done by every worker within this fails.
    double collective_timeout_s = 1800;
    /// A worker whose heartbeat (every second, through the store) stops for this long is dead
    /// or hung: the others exit non-zero naming it.
    double dead_after_s = 20;
    /// How long the workers wait for each other at the rendezvous.
    double rendezvous_timeout_s = 300;
};

/// Options with POCKETFLOW_DEAD_AFTER, POCKETFLOW_COLLECTIVE_TIMEOUT and
/// POCKETFLOW_RENDEZVOUS_TIMEOUT (seconds, 1–86400) applied; ConfigError for a bad value.
Options options_from_environment();

/// Joins the group: rank 0 hosts the TCPStore at MASTER_ADDR:MASTER_PORT, every worker connects,
/// a ProcessGroupGloo is created over it, and a watchdog thread starts (heartbeats, dead peers).
/// Throws Error naming the address when the rendezvous fails.
void init(const World& world, const Options& options = {});
/// Leaves the group cleanly: this worker is marked done (the others' watchdogs stop watching it)
/// and rank 0 waits for the others before its store goes away. `failure`: the message of the
/// error this worker stops with (the others report it), empty for a clean end.
void finish(const std::string& failure = "");

/// Whether collectives reach other workers: a group runs, with more than one worker, and this
/// thread is not inside run_once (whose work is rank 0's alone).
bool active();
int rank();        ///< 0 without a group
int world_size();  ///< 1 without a group (or inside run_once)
int local_world_size();
/// Whether this process writes the run directory, logs and checkpoints (rank 0, or no group).
bool is_main();

/// Sends rank 0's tensors (same shapes on every rank) to every worker, in place.
void broadcast(std::vector<at::Tensor> tensors);
/// Sums tensors over the workers, in place (bucketed: tensors are flattened into buffers of at
/// most `bucket_bytes`, each reduced asynchronously while the next is packed).
void all_reduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);
/// Rank 0's bytes on every worker.
std::string broadcast_bytes(const std::string& bytes);
/// Rank 0's model (graph, weights, masks, quantisation state) on every worker: the others'
/// models are replaced by a decoded copy of rank 0's .pfm bytes.
void broadcast_model(std::shared_ptr<Model>& model);
/// Parameters and buffers of rank 0 copied into every worker's model of the same graph.
void broadcast_weights(Model& model);

/// Synchronised BatchNorm (train.sync_bn): whether BatchNorm layers in training mode normalise
/// with the statistics of the global batch (every worker's images) instead of their own.
void set_sync_batch_norm(bool on);
bool sync_batch_norm();
/// BatchNorm in training mode over the global batch: per-channel sums and sums of squares of `x`
/// all-reduced (autograd-aware: their gradients are all-reduced in the backward pass), the
/// running statistics updated with the global mean and unbiased variance. Every worker must call
/// it for the same layers in the same order (they run the same graph).
at::Tensor sync_batch_norm(const at::Tensor& x,
                           const at::Tensor& weight,
                           const at::Tensor& bias,
                           const at::Tensor& running_mean,
                           const at::Tensor& running_var,
                           double momentum,
                           double eps);

/// Work done once, by rank 0, for every worker (a search, a decision): rank 0 runs `work` with
/// collectives off (world_size() is 1 inside) and its result string is handed to the others, who
/// wait for it — through the store, for as long as rank 0 stays alive, so a long search times
/// nothing out. Without a group: `work()`.
std::string run_once(const std::function<std::string()>& work);

}  // namespace dist

/// `--nproc N` of `train` and `compress`: starts N copies of this program (`argv`: the command
/// line without `--nproc`) as local workers with torchrun's variables set (MASTER_ADDR 127.0.0.1,
/// MASTER_PORT a free port), forwards SIGINT/SIGTERM to them, and returns once all have ended:
/// rank 0's exit code if it failed, else the first failing worker's (128 + signal for a killed
/// one), or 0. Workers still
/// running 60 s after one failed are stopped (their watchdogs normally end them sooner).
int launch_local_workers(int nproc, const std::vector<std::string>& argv);

}  // namespace pocketflow
