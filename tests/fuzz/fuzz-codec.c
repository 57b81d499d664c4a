/* SPDX-License-Identifier: MIT */
/*
 * The cold tiers' codecs (kvdrived/util/codec.c) on any input.
 *
 * Input: u8 codec (mod the number of codecs), u8 dtype (mod 4, + 1), u8 a
 * byte to flip, then the payload. The payload is decoded as it is (an error
 * or a decode, never a crash); then encoded (lossy codecs get a shape of one
 * head of 4 channels that fits, when the length allows one), decoded again
 * (bit-exact for the lossless codecs) and decoded once more with one byte
 * flipped.
 */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct kvd_codec_shape shape = { .kv_heads = 1, .head_dim = 4, .block_tokens = 1 };
        enum kvd_codec c;
        uint8_t *enc, *dec;
        size_t cap, n = 0, m = 0, flip;
        int r;

        if (size < 3)
                return 0;
        c = (enum kvd_codec)(data[0] % KVD_CODEC_ID_MAX);
        shape.dtype = data[1] % 4u + 1u;
        flip = data[2];
        data += 3;
        size -= 3;
        if (size >= 16 && size % 16 == 0)
                shape.block_tokens = (uint32_t)(size / 16);
        cap = kvd_codec_bound(c, size) + 1;
        enc = malloc(cap);
        dec = malloc(cap + size);
        if (!enc || !dec)
                fuzz_fail("out of memory");
        (void)kvd_codec_decode(c, &shape, data, size, dec, cap + size, &m);
        r = kvd_codec_encode(c, &shape, data, size, enc, cap, &n);
        if (r == 0) {
                if (n > cap - 1)
                        fuzz_fail("codec %d wrote %zu bytes past its bound %zu", c, n, cap - 1);
                r = kvd_codec_decode(c, &shape, enc, n, dec, size, &m);
                if (r < 0 || m != size)
                        fuzz_fail("codec %d: its own buffer does not decode: %d", c, r);
                if (kvd_codec_lossless(c) && size && memcmp(dec, data, size))
                        fuzz_fail("codec %d: lossless round trip differs", c);
                if (n) {
                        enc[flip % n] ^= 0x5a;
                        (void)kvd_codec_decode(c, &shape, enc, n, dec, size, &m);
                }
        } else if (kvd_codec_lossless(c)) {
                fuzz_fail("lossless codec %d refused %zu bytes: %d", c, size, r);
        }
        free(dec);
        free(enc);
        return 0;
}
