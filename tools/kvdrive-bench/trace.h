/* SPDX-License-Identifier: MIT */
/*
 * Decode traces (docs/trace-format.md): a directory with meta.json and raw
 * little-endian fp16 arrays
 *   k.bin, v.bin  [layers][kv_heads][tokens][head_dim]
 *   q.bin         [steps][layers][q_heads][head_dim]
 * The first `tokens - steps` tokens are the prompt (prefilled); token
 * `tokens - steps + t` is appended at decode step t, whose queries q[t]
 * attend over tokens [0, tokens - steps + t] (the new token included).
 * So anyone can dump real K/V and queries from a model with numpy and
 * replay them.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

struct kvb_trace_meta {
        uint32_t layers;
        uint32_t kv_heads;
        uint32_t q_heads;       /* a multiple of kv_heads (GQA) */
        uint32_t head_dim;
        uint32_t tokens;        /* prompt + steps */
        uint32_t steps;         /* decode steps, < tokens */
        /* dtype: "f16" only (uint16_t IEEE half) */
};

struct kvb_trace {
        struct kvb_trace_meta meta;
        const uint16_t *k, *v;  /* read-only mappings of k.bin, v.bin */
        const uint16_t *q;      /* of q.bin */
        /* private: */
        size_t k_len, v_len, q_len;
};

/*
 * Opens and validates the trace in dir: meta.json (keys above, integers,
 * dtype "f16", q_heads % kv_heads == 0, steps < tokens, sizes that fit),
 * every file present with exactly the size meta.json implies, and no NaN
 * or Inf anywhere. On failure returns -errno and writes a message naming
 * the problem (file, key, offset) into err. The caller closes *ret.
 */
int kvb_trace_open(const char *dir, struct kvb_trace **ret, char *err, size_t errlen);

/* Writes the message into err (errlen bytes, if any) and returns r: the
 * error convention of the trace reader, writer and generator. */
__attribute__((format(printf, 4, 5))) int kvb_fail(char *err, size_t errlen, int r, const char *fmt, ...);
struct kvb_trace *kvb_trace_close(struct kvb_trace *t);

/* Writes a trace (meta.json, k.bin, v.bin, q.bin) into dir (created if
 * missing). Arrays as in the layout above. 0 or -errno with err set. */
int kvb_trace_write(const char *dir, const struct kvb_trace_meta *m, const uint16_t *k, const uint16_t *v,
                    const uint16_t *q, char *err, size_t errlen);

/* Element offsets into k/v (token t of head h of layer l) and q. */
static inline size_t kvb_kv_index(const struct kvb_trace_meta *m, uint32_t l, uint32_t h, uint32_t t)
{
        return (((size_t)l * m->kv_heads + h) * m->tokens + t) * m->head_dim;
}

static inline size_t kvb_q_index(const struct kvb_trace_meta *m, uint32_t step, uint32_t l, uint32_t qh)
{
        return (((size_t)step * m->layers + l) * m->q_heads + qh) * m->head_dim;
}

/*
 * The checks kvb_trace_open() makes on meta.json's numbers: every count at
 * least 1, q_heads % kv_heads == 0, steps < tokens, and the byte sizes of
 * the arrays fit in size_t. Returns 0 and, where the pointers are not NULL,
 * the element counts of k (= of v) and of q; or -EINVAL with err set (the
 * ret_* untouched).
 */
int kvb_trace_meta_check(const struct kvb_trace_meta *m, size_t *ret_kv_elems, size_t *ret_q_elems, char *err,
                         size_t errlen);

/*
 * Streaming writer, for traces larger than memory is happy to hold: open,
 * put every element of k, v and q exactly once (in any order, any number of
 * pieces), finish, free. Until finish succeeds the directory holds no
 * meta.json (an older one is removed by open), so a half-written trace never
 * opens.
 */
enum kvb_trace_array {
        KVB_TRACE_K,
        KVB_TRACE_V,
        KVB_TRACE_Q,
};

struct kvb_trace_writer;
struct json_t;

/* Checks m, creates dir (one level) if missing, truncates or creates k.bin,
 * v.bin and q.bin. 0 and a writer the caller frees, or -errno with err set. */
int kvb_trace_writer_open(const char *dir, const struct kvb_trace_meta *m, struct kvb_trace_writer **ret,
                          char *err, size_t errlen);

/* Writes n elements (host order = little-endian fp16) at element offset off
 * of array a. -EINVAL past the array's end, or -errno of the write. */
int kvb_trace_writer_put(struct kvb_trace_writer *w, enum kvb_trace_array a, size_t off, const uint16_t *data,
                         size_t n, char *err, size_t errlen);

/* Checks that every array received exactly its size, closes the arrays and
 * writes meta.json: the keys of m and dtype, then those keys of extra (a
 * JSON object, borrowed, may be NULL) that meta.json does not define.
 * 0 or -errno with err set. The caller still frees w. */
int kvb_trace_writer_finish(struct kvb_trace_writer *w, struct json_t *extra, char *err, size_t errlen);

/* Closes what is open (without writing meta.json) and frees w. Accepts NULL,
 * returns NULL. */
struct kvb_trace_writer *kvb_trace_writer_free(struct kvb_trace_writer *w);
