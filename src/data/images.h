// SPDX-License-Identifier: Apache-2.0
// Internal to src/data: image resampling shared by images.cpp (folder datasets) and data.cpp
// (the Loader's crops, reshaped datasets).
#pragma once

#include <cstdint>

#include "pocketflow/data.h"

namespace pocketflow {

/// Bilinear sample of the source box [x0, x0+bw) × [y0, y0+bh) into an out_h × out_w image.
Image resample(
    const Image& src, double y0, double x0, double bh, double bw, int64_t out_h, int64_t out_w);

}  // namespace pocketflow
