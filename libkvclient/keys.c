/* SPDX-License-Identifier: MIT */
/* Block keys and geometry helpers: pure functions, no connection needed. */
#include "client-internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/random.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

/* Tokens are hashed in chunks of this many, converted to little-endian. */
#define TOKEN_CHUNK 64

static void put_le64(uint8_t *p, uint64_t v)
{
        for (unsigned i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le32(uint8_t *p, uint32_t v)
{
        for (unsigned i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void key_from_hash(XXH128_hash_t h, struct kvc_key *ret)
{
        ret->hi = h.high64;
        ret->lo = h.low64;
}

_public_ size_t kvc_dtype_size(enum kvc_dtype dtype)
{
        switch (dtype) {
        case KVC_DTYPE_F16:
        case KVC_DTYPE_BF16:
                return 2;
        case KVC_DTYPE_F32:
                return 4;
        case KVC_DTYPE_FP8:
                return 1;
        }
        return 0;
}

_public_ uint64_t kvc_block_bytes(const struct kvc_geometry *g)
{
        uint64_t b;
        size_t esize;

        if (!g || g->layers == 0 || g->kv_heads == 0 || g->head_dim == 0 || g->block_tokens == 0)
                return 0;
        esize = kvc_dtype_size((enum kvc_dtype)g->dtype);
        if (esize == 0)
                return 0;
        /* 2 (K and V) * heads * dim * tokens * size: each factor < 2^32. */
        b = 2ull * g->kv_heads * g->head_dim;
        if (__builtin_mul_overflow(b, (uint64_t)g->block_tokens, &b) ||
            __builtin_mul_overflow(b, (uint64_t)esize, &b))
                return 0;
        return b;
}

_public_ void kvc_key_chain(const struct kvc_key *parent, const uint32_t *tokens, size_t n,
                            struct kvc_key *ret)
{
        XXH3_state_t st;
        uint8_t head[16] = { 0 };
        uint8_t chunk[TOKEN_CHUNK * 4];

        if (parent) {
                put_le64(head, parent->hi);
                put_le64(head + 8, parent->lo);
        }
        XXH3_INITSTATE(&st);
        XXH3_128bits_reset(&st);
        XXH3_128bits_update(&st, head, sizeof(head));
        while (n > 0) {
                size_t k = n < TOKEN_CHUNK ? n : TOKEN_CHUNK;

                for (size_t i = 0; i < k; i++)
                        put_le32(chunk + 4 * i, tokens[i]);
                XXH3_128bits_update(&st, chunk, 4 * k);
                tokens += k;
                n -= k;
        }
        key_from_hash(XXH3_128bits_digest(&st), ret);
}

_public_ int kvc_key_prefix_chain(const uint32_t *tokens, size_t n_tokens, uint32_t block_tokens,
                                  struct kvc_key *ret_keys, size_t max)
{
        const struct kvc_key *parent = NULL;
        size_t n;

        if (block_tokens == 0 || (!tokens && n_tokens > 0) || (!ret_keys && max > 0))
                return -EINVAL;
        n = n_tokens / block_tokens;
        if (n > max)
                n = max;
        if (n > INT_MAX)
                n = INT_MAX;
        for (size_t i = 0; i < n; i++) {
                kvc_key_chain(parent, tokens + i * block_tokens, block_tokens, &ret_keys[i]);
                parent = &ret_keys[i];
        }
        return (int)n;
}

_public_ int kvc_key_sequence_new(struct kvc_key *ret_seq)
{
        uint8_t buf[16];
        size_t got = 0;

        if (!ret_seq)
                return -EINVAL;
        while (got < sizeof(buf)) {
                ssize_t n = getrandom(buf + got, sizeof(buf) - got, 0);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                got += (size_t)n;
        }
        memcpy(&ret_seq->hi, buf, 8);
        memcpy(&ret_seq->lo, buf + 8, 8);
        return 0;
}

_public_ void kvc_key_private(const struct kvc_key *seq, uint64_t index, struct kvc_key *ret)
{
        /* The tag keeps private keys in their own domain: a prefix key hashes
         * a 16-byte parent and whole tokens, never this 40-byte layout. */
        static const char tag[16] = "kvdrive-private"; /* 15 chars + NUL */
        uint8_t buf[sizeof(tag) + 24];

        memcpy(buf, tag, sizeof(tag));
        put_le64(buf + 16, seq ? seq->hi : 0);
        put_le64(buf + 24, seq ? seq->lo : 0);
        put_le64(buf + 32, index);
        key_from_hash(XXH3_128bits(buf, sizeof(buf)), ret);
}
