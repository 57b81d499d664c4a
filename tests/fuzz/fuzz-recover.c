/* SPDX-License-Identifier: MIT */
/* Recovery from an SSD tier's file the input writes, then a session against
 * the daemon that recovered it (daemon-harness.c, fuzz.h): what a restarted
 * daemon does with what it finds on disk, headers with good crcs included. */
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
        return fuzz_daemon_init(1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        return fuzz_recover_one(data, size);
}
