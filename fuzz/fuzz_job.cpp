// SPDX-License-Identifier: Apache-2.0
// Fuzz target: a job file (YAML) through parsing, validation and every stage's learner options.
#include "pocketflow/config.h"
#include "pocketflow/learner.h"

#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace pocketflow;
    fuzz::quiet();
    const std::string text(reinterpret_cast<const char*>(data), size);
    fuzz::expect_clean(text, [&] {
        const Job job = parse_job(text, "fuzz.yaml", {});
        create_learners(job);
    });
    return 0;
}
