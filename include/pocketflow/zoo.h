// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pocketflow/graph.h"

namespace pocketflow {

/// Names of the built-in architectures: lenet5, resnet20/32/44/56 (CIFAR-style), resnet18/34/50,
/// mobilenet_v1, mobilenet_v2, vgg16.
std::vector<std::string> zoo_names();

/// Builds a zoo architecture for inputs of `input_shape` ({C, H, W}) and `num_classes` outputs,
/// with freshly initialised weights (seeded). Throws ConfigError for an unknown name (with a
/// suggestion) or an input too small for the architecture.
Graph build_zoo_model(const std::string& arch,
                      int64_t num_classes,
                      const std::vector<int64_t>& input_shape,
                      uint64_t seed = 0);

}  // namespace pocketflow
