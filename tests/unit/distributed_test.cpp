// SPDX-License-Identifier: Apache-2.0
// The launcher contract (environment variables) and the learning-rate rule of data-parallel
// training; the collectives themselves are tested end to end (e2e/distributed_test.cpp).
#include "pocketflow/distributed.h"

#include <cstdlib>

#include <gtest/gtest.h>

#include "pocketflow/error.h"
#include "pocketflow/trainer.h"

namespace pocketflow {
namespace {

/// Sets environment variables for one test and restores the previous values after it.
class EnvGuard {
public:
    EnvGuard(std::initializer_list<std::pair<const char*, const char*>> values) {
        for (const char* name : kNames) {
            const char* old = std::getenv(name);
            saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
            ::unsetenv(name);
        }
        for (const auto& [name, value] : values) {
            ::setenv(name, value, 1);
        }
    }
    ~EnvGuard() {
        for (const auto& [name, value] : saved_) {
            if (value) {
                ::setenv(name.c_str(), value->c_str(), 1);
            } else {
                ::unsetenv(name.c_str());
            }
        }
    }

private:
    static constexpr const char* kNames[] = {"RANK",
                                             "WORLD_SIZE",
                                             "LOCAL_RANK",
                                             "LOCAL_WORLD_SIZE",
                                             "MASTER_ADDR",
                                             "MASTER_PORT",
                                             "OMPI_COMM_WORLD_RANK",
                                             "OMPI_COMM_WORLD_SIZE",
                                             "OMPI_COMM_WORLD_LOCAL_RANK",
                                             "OMPI_COMM_WORLD_LOCAL_SIZE",
                                             "SLURM_PROCID",
                                             "SLURM_NTASKS",
                                             "SLURM_LOCALID",
                                             "SLURM_NTASKS_PER_NODE",
                                             "POCKETFLOW_DEAD_AFTER"};
    std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

TEST(DistributedEnv, NoLauncherMeansOneProcess) {
    EnvGuard env({});
    EXPECT_FALSE(dist::world_from_environment());
    EnvGuard one({{"WORLD_SIZE", "1"}, {"RANK", "0"}});
    EXPECT_FALSE(dist::world_from_environment());
}

TEST(DistributedEnv, TorchrunContract) {
    EnvGuard env({{"RANK", "3"},
                  {"WORLD_SIZE", "4"},
                  {"LOCAL_RANK", "1"},
                  {"LOCAL_WORLD_SIZE", "2"},
                  {"MASTER_ADDR", "10.0.0.7"},
                  {"MASTER_PORT", "1234"}});
    auto w = dist::world_from_environment();
    ASSERT_TRUE(w);
    EXPECT_EQ(w->rank, 3);
    EXPECT_EQ(w->world_size, 4);
    EXPECT_EQ(w->local_rank, 1);
    EXPECT_EQ(w->local_world_size, 2);
    EXPECT_EQ(w->master_addr, "10.0.0.7");
    EXPECT_EQ(w->master_port, 1234);
}

TEST(DistributedEnv, OpenMpiAndSlurm) {
    {
        EnvGuard env({{"OMPI_COMM_WORLD_RANK", "1"},
                      {"OMPI_COMM_WORLD_SIZE", "2"},
                      {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                      {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
        auto w = dist::world_from_environment();
        ASSERT_TRUE(w);
        EXPECT_EQ(w->rank, 1);
        EXPECT_EQ(w->world_size, 2);
        EXPECT_EQ(w->master_addr, "127.0.0.1");
        EXPECT_EQ(w->master_port, 29500);
    }
    {
        // Slurm's "2(x3)" tasks per node is not a number: every worker counts as local.
        EnvGuard env({{"SLURM_PROCID", "5"},
                      {"SLURM_NTASKS", "6"},
                      {"SLURM_LOCALID", "1"},
                      {"SLURM_NTASKS_PER_NODE", "2(x3)"},
                      {"MASTER_ADDR", "node1"}});
        auto w = dist::world_from_environment();
        ASSERT_TRUE(w);
        EXPECT_EQ(w->rank, 5);
        EXPECT_EQ(w->world_size, 6);
        EXPECT_EQ(w->local_rank, 1);
        EXPECT_EQ(w->local_world_size, 6);
        EXPECT_EQ(w->master_addr, "node1");
    }
}

TEST(DistributedEnv, MalformedValuesNameTheVariable) {
    auto message = [] {
        try {
            dist::world_from_environment();
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    {
        EnvGuard env({{"WORLD_SIZE", "2"}, {"RANK", "2"}});
        EXPECT_NE(message().find("RANK='2': expected an integer in [0, 1]"), std::string::npos);
    }
    {
        EnvGuard env({{"WORLD_SIZE", "two"}, {"RANK", "0"}});
        EXPECT_NE(message().find("WORLD_SIZE='two'"), std::string::npos);
    }
    {
        EnvGuard env({{"WORLD_SIZE", "2"}});
        EXPECT_NE(message().find("RANK is not"), std::string::npos) << message();
    }
    {
        EnvGuard env({{"WORLD_SIZE", "4"}, {"RANK", "0"}, {"MASTER_PORT", "70000"}});
        EXPECT_NE(message().find("MASTER_PORT='70000'"), std::string::npos);
    }
    {
        EnvGuard env(
            {{"WORLD_SIZE", "4"}, {"RANK", "0"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}});
        EXPECT_NE(message().find("disagree"), std::string::npos) << message();
    }
    {
        EnvGuard env({{"POCKETFLOW_DEAD_AFTER", "0.1"}});
        EXPECT_THROW(dist::options_from_environment(), ConfigError);
    }
    {
        EnvGuard env({{"POCKETFLOW_DEAD_AFTER", "5"}});
        EXPECT_EQ(dist::options_from_environment().dead_after_s, 5);
    }
}

TEST(DistributedEnv, WithoutAGroupCollectivesAreIdentities) {
    EXPECT_FALSE(dist::active());
    EXPECT_EQ(dist::world_size(), 1);
    EXPECT_TRUE(dist::is_main());
    at::Tensor t = at::ones({3});
    dist::all_reduce_sum({t});
    EXPECT_TRUE(t.equal(at::ones({3})));
    EXPECT_EQ(dist::broadcast_bytes("abc"), "abc");
    EXPECT_EQ(dist::run_once([] { return std::string("done"); }), "done");
}

TEST(LearningRateRule, ScalesWithTheGlobalBatch) {
    TrainConfig c;
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 128, 1), 1.0);
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 128, 4), 4.0);  // linear: 512 / 128
    c.lr_scaling = "sqrt";
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 128, 4), 2.0);
    c.lr_scaling = "none";
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 128, 4), 1.0);
    c.lr_scaling = "linear";
    c.reference_batch = 256;  // the lr was tuned for 256 images a step
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 64, 2), 0.5);
    EXPECT_DOUBLE_EQ(lr_scale_for(c, 128, 2), 1.0);
}

}  // namespace
}  // namespace pocketflow
