/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode --device cuda: what decode-dev-cuda.c takes from
 * decode-dev-cuda-merge.cu.
 */
#pragma once

#include "kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * TO BE REPLACED by kvk_cuda_lse_merge() (kernels/kernels-cuda.h, branch
 * h/merge) once it lands, with the same arguments: merges the partial result
 * B (d_part_out [q_heads][head_dim], d_part_lse [q_heads]) into A (d_out,
 * d_lse) in place, in fp32, one thread block per query head. A head whose
 * B lse is -inf stays as it is; one whose A lse is -inf takes B's; a NaN or
 * +inf lse makes it NaN. Returns 0 once enqueued on stream (a cudaStream_t),
 * -EINVAL for a bad shape or pointer, -EIO when the launch fails.
 */
int bench_cuda_lse_merge(const struct kvk_shape *s, float *d_out, float *d_lse, const float *d_part_out,
                         const float *d_part_lse, void *stream);

#ifdef __cplusplus
}
#endif
