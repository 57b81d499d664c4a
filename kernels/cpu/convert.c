/* SPDX-License-Identifier: MIT */
/* Scalar fp16 / bf16 <-> fp32 conversions (bit exact, round to nearest even). */
#include "kernels-internal.h"

float kvk_f16_to_f32(uint16_t h)
{
        return kvk__h2f(h);
}

uint16_t kvk_f32_to_f16(float f)
{
        uint32_t x = kvk__f32_bits(f);
        uint32_t sign = (x >> 16) & 0x8000u;
        uint32_t ax = x & 0x7fffffffu;
        uint32_t o;

        if (ax > 0x7f800000u) {
                /* NaN: keep the top payload bits; if none are left, keep it a NaN. */
                o = 0x7c00u | ((ax >> 13) & 0x3ffu);
                if ((o & 0x3ffu) == 0)
                        o |= 0x200u;
        } else if (ax >= 0x47800000u) {
                /* >= 65536 (and inf): inf. [65520, 65536) rounds up to inf below. */
                o = 0x7c00u;
        } else if (ax < 0x38800000u) {
                /* Below 2^-14: a subnormal or zero. Adding 0.5 leaves |f| in the
                 * low mantissa bits of the sum, whose ulp (2^-24) is the fp16
                 * subnormal step, rounded to nearest even by the FPU. */
                float t = kvk__bits_f32(ax) + 0.5f;

                o = kvk__f32_bits(t) - 0x3f000000u;
        } else {
                /* Normal: rebias the exponent, round the 13 dropped bits to
                 * nearest even. A carry may ripple into the exponent, up to inf. */
                uint32_t odd = (ax >> 13) & 1u;

                ax += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
                o = ax >> 13;
        }
        return (uint16_t)(o | sign);
}

float kvk_bf16_to_f32(uint16_t h)
{
        return kvk__bf2f(h);
}

uint16_t kvk_f32_to_bf16(float f)
{
        uint32_t x = kvk__f32_bits(f);

        if ((x & 0x7fffffffu) > 0x7f800000u) {
                uint32_t o = x >> 16;

                if ((o & 0x7fu) == 0)
                        o |= 0x40u;
                return (uint16_t)o;
        }
        x += 0x7fffu + ((x >> 16) & 1u);
        return (uint16_t)(x >> 16);
}
