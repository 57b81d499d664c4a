/* SPDX-License-Identifier: MIT */
/* Every request handler, in-process, with an 8 MiB SSD tier in a temporary
 * directory (daemon-harness.c): durable Puts, demotion, Prefetch. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        return fuzz_daemon_init(1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        return fuzz_daemon_one(data, size);
}
