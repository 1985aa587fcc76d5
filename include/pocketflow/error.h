// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace pocketflow {

/// Base of every error pocketflow throws. It carries the process exit code the CLI returns for it:
/// 2 for bad input (config, file, argument), 1 for any other failure.
///
/// Example:
///   throw ConfigError("job.yaml:3:5: failed to read train.epochs with -1: must be >= 1");
class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message, int exit_code = 1)
        : std::runtime_error(message), exit_code_(exit_code) {}
    /// Exit code the CLI returns when this error ends a command.
    int exit_code() const { return exit_code_; }

private:
    int exit_code_;
};

/// Invalid job file, override or argument: exit code 2.
class ConfigError : public Error {
public:
    explicit ConfigError(const std::string& message) : Error(message, 2) {}
};

/// An input file that is missing, unreadable, truncated or corrupted: exit code 2.
class InputError : public Error {
public:
    explicit InputError(const std::string& message) : Error(message, 2) {}
};

/// An output that could not be written: exit code 1.
class IoError : public Error {
public:
    explicit IoError(const std::string& message) : Error(message, 1) {}
};

/// Non-finite loss or another numeric breakdown during a run: exit code 1.
class NumericError : public Error {
public:
    explicit NumericError(const std::string& message) : Error(message, 1) {}
};

/// The run was interrupted (SIGINT/SIGTERM or a requested stop) after saving a checkpoint.
class Interrupted : public Error {
public:
    explicit Interrupted(const std::string& message) : Error(message, 130) {}
};

}  // namespace pocketflow

/// Throws `type` with a formatted message when `cond` is false; for user-facing preconditions.
#define PF_CHECK(cond, type, ...)                               \
    do {                                                        \
        if (!(cond)) {                                          \
            throw ::pocketflow::type(fmt::format(__VA_ARGS__)); \
        }                                                       \
    } while (false)
