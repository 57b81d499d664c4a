/* SPDX-License-Identifier: MIT */
/* Every request handler, in-process, host tier only (daemon-harness.c). */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        return fuzz_daemon_init(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        return fuzz_daemon_one(data, size);
}
