/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode --device cuda in a build without CUDA (meson found no
 * nvcc, or -Dcuda=disabled): the probe says so and the run stops there
 * (exit 77, docs/gpu.md); no other op is ever called.
 */
#include <stdio.h>

#include "decode.h"

static int nocuda_probe(void)
{
        fprintf(stderr, "kvdrive-bench decode: --device cuda: this kvdrive-bench was built without CUDA "
                "(rebuild with nvcc installed: meson setup -Dcuda=enabled)\n");
        return -1;
}

const struct decode_device decode_device_cuda = {
        .name = "cuda",
        .probe = nocuda_probe,
};
