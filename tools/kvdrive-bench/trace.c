/* SPDX-License-Identifier: MIT */
/*
 * Decode traces (trace.h, docs/trace-format.md): meta.json through jansson,
 * the arrays mapped read-only and checked for NaN and Inf, and a writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trace.h"

/* The arrays are little-endian fp16 and read in place as uint16_t. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "traces are little-endian: add byte swapping for this host");

/* meta.json is a few hundred bytes; anything this large is not one. */
#define META_MAX_BYTES (1u << 20)

static const char *const array_names[] = { "k.bin", "v.bin", "q.bin" };

__attribute__((format(printf, 4, 5))) int kvb_fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen > 0) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return r;
}

static int path_join(char *buf, size_t size, const char *dir, const char *name)
{
        int n = snprintf(buf, size, "%s/%s", dir, name);

        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

static bool mul_size(size_t *acc, size_t f)
{
        return !__builtin_mul_overflow(*acc, f, acc);
}

int kvb_trace_meta_check(const struct kvb_trace_meta *m, size_t *ret_kv_elems, size_t *ret_q_elems, char *err,
                         size_t errlen)
{
        const struct {
                const char *key;
                uint32_t v;
        } counts[] = {
                { "layers", m->layers }, { "kv_heads", m->kv_heads }, { "q_heads", m->q_heads },
                { "head_dim", m->head_dim }, { "tokens", m->tokens }, { "steps", m->steps },
        };
        size_t kv = 1, q = 1;

        for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
                if (counts[i].v == 0)
                        return kvb_fail(err, errlen, -EINVAL, "meta.json: \"%s\" must be at least 1, got 0",
                                        counts[i].key);
        if (m->q_heads % m->kv_heads != 0)
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: q_heads (%" PRIu32 ") is not a multiple of kv_heads (%" PRIu32
                                "): GQA needs q_heads = kv_heads * group",
                                m->q_heads, m->kv_heads);
        if (m->steps >= m->tokens)
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: steps (%" PRIu32 ") must be less than tokens (%" PRIu32
                                "): tokens counts the prompt (at least 1) plus the decode steps",
                                m->steps, m->tokens);
        /* Bytes, not only elements, must fit: the files are mapped whole. */
        if (!mul_size(&kv, m->layers) || !mul_size(&kv, m->kv_heads) || !mul_size(&kv, m->tokens) ||
            !mul_size(&kv, m->head_dim) || kv > SIZE_MAX / sizeof(uint16_t))
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: k.bin and v.bin would exceed SIZE_MAX bytes "
                                "(layers * kv_heads * tokens * head_dim * 2 overflows)");
        if (!mul_size(&q, m->steps) || !mul_size(&q, m->layers) || !mul_size(&q, m->q_heads) ||
            !mul_size(&q, m->head_dim) || q > SIZE_MAX / sizeof(uint16_t))
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: q.bin would exceed SIZE_MAX bytes "
                                "(steps * layers * q_heads * head_dim * 2 overflows)");
        if (ret_kv_elems)
                *ret_kv_elems = kv;
        if (ret_q_elems)
                *ret_q_elems = q;
        return 0;
}

/* ---- reading ------------------------------------------------------------ */

static const char *json_type_name(const json_t *j)
{
        switch (json_typeof(j)) {
        case JSON_OBJECT:
                return "an object";
        case JSON_ARRAY:
                return "an array";
        case JSON_STRING:
                return "a string";
        case JSON_INTEGER:
                return "an integer";
        case JSON_REAL:
                return "a real number";
        case JSON_TRUE:
        case JSON_FALSE:
                return "a boolean";
        case JSON_NULL:
                return "null";
        }
        return "an unknown JSON type";
}

static int meta_u32(const json_t *root, const char *key, uint32_t *ret, char *err, size_t errlen)
{
        const json_t *j = json_object_get(root, key);
        json_int_t v;

        if (!j)
                return kvb_fail(err, errlen, -EINVAL, "meta.json: missing key \"%s\"", key);
        if (!json_is_integer(j))
                return kvb_fail(err, errlen, -EINVAL, "meta.json: \"%s\" must be a positive integer, not %s", key,
                                json_type_name(j));
        v = json_integer_value(j);
        if (v <= 0)
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: \"%s\" must be a positive integer, got %" JSON_INTEGER_FORMAT,
                                key, v);
        if ((unsigned long long)v > UINT32_MAX)
                return kvb_fail(err, errlen, -EINVAL,
                                "meta.json: \"%s\" = %" JSON_INTEGER_FORMAT " is too large (at most %" PRIu32 ")",
                                key, v, UINT32_MAX);
        *ret = (uint32_t)v;
        return 0;
}

static int meta_parse(const json_t *root, struct kvb_trace_meta *ret, char *err, size_t errlen)
{
        struct kvb_trace_meta m;
        const json_t *dtype;
        int r;

        if (!json_is_object(root))
                return kvb_fail(err, errlen, -EINVAL, "meta.json: must hold a JSON object, not %s",
                                json_type_name(root));
        if ((r = meta_u32(root, "layers", &m.layers, err, errlen)) < 0 ||
            (r = meta_u32(root, "kv_heads", &m.kv_heads, err, errlen)) < 0 ||
            (r = meta_u32(root, "q_heads", &m.q_heads, err, errlen)) < 0 ||
            (r = meta_u32(root, "head_dim", &m.head_dim, err, errlen)) < 0 ||
            (r = meta_u32(root, "tokens", &m.tokens, err, errlen)) < 0 ||
            (r = meta_u32(root, "steps", &m.steps, err, errlen)) < 0)
                return r;
        dtype = json_object_get(root, "dtype");
        if (!dtype)
                return kvb_fail(err, errlen, -EINVAL, "meta.json: missing key \"dtype\" (must be \"f16\")");
        if (!json_is_string(dtype))
                return kvb_fail(err, errlen, -EINVAL, "meta.json: \"dtype\" must be the string \"f16\", not %s",
                                json_type_name(dtype));
        if (strcmp(json_string_value(dtype), "f16") != 0)
                return kvb_fail(err, errlen, -EINVAL, "meta.json: dtype \"%s\" is not supported (only \"f16\")",
                                json_string_value(dtype));
        r = kvb_trace_meta_check(&m, NULL, NULL, err, errlen);
        if (r < 0)
                return r;
        *ret = m;
        return 0;
}

static int meta_load(const char *dir, struct kvb_trace_meta *ret, char *err, size_t errlen)
{
        char path[PATH_MAX];
        json_error_t jerr;
        json_t *root = NULL;
        struct stat st;
        int fd, r;

        if (path_join(path, sizeof(path), dir, "meta.json") < 0)
                return kvb_fail(err, errlen, -ENAMETOOLONG, "meta.json: path too long: %s/meta.json", dir);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                return kvb_fail(err, errlen, r, "meta.json: cannot open %s: %s", path, strerror(-r));
        }
        if (fstat(fd, &st) < 0) {
                r = kvb_fail(err, errlen, -errno, "meta.json: cannot stat %s: %s", path, strerror(errno));
                goto out_close;
        }
        if (!S_ISREG(st.st_mode)) {
                r = kvb_fail(err, errlen, -EINVAL, "meta.json: %s is not a regular file", path);
                goto out_close;
        }
        if (st.st_size > META_MAX_BYTES) {
                r = kvb_fail(err, errlen, -EINVAL, "meta.json: %s is %jd bytes, more than a meta.json may be (%u)",
                             path, (intmax_t)st.st_size, META_MAX_BYTES);
                goto out_close;
        }
        root = json_loadfd(fd, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
                r = kvb_fail(err, errlen, -EINVAL, "meta.json: not valid JSON: %s (line %d, column %d)", jerr.text,
                             jerr.line, jerr.column);
                goto out_close;
        }
        r = meta_parse(root, ret, err, errlen);
        json_decref(root);
out_close:
        close(fd);
        return r;
}

/* Maps dir/name read-only after checking it holds exactly elems fp16s. */
static int map_array(const char *dir, enum kvb_trace_array a, size_t elems, const char *formula,
                     const uint16_t **ret, size_t *ret_len, char *err, size_t errlen)
{
        const char *name = array_names[a];
        size_t want = elems * sizeof(uint16_t);
        char path[PATH_MAX];
        struct stat st;
        void *p;
        int fd, r;

        if (path_join(path, sizeof(path), dir, name) < 0)
                return kvb_fail(err, errlen, -ENAMETOOLONG, "%s: path too long: %s/%s", name, dir, name);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                r = -errno;
                return kvb_fail(err, errlen, r, "%s: cannot open %s: %s", name, path, strerror(-r));
        }
        if (fstat(fd, &st) < 0) {
                r = kvb_fail(err, errlen, -errno, "%s: cannot stat %s: %s", name, path, strerror(errno));
                goto out_close;
        }
        if (!S_ISREG(st.st_mode)) {
                r = kvb_fail(err, errlen, -EINVAL, "%s: %s is not a regular file", name, path);
                goto out_close;
        }
        if ((uintmax_t)st.st_size != want) {
                r = kvb_fail(err, errlen, -EINVAL,
                             "%s: file is too %s: %jd bytes, but meta.json implies %zu (%s * 2 bytes)", name,
                             (uintmax_t)st.st_size < want ? "short" : "long", (intmax_t)st.st_size, want, formula);
                goto out_close;
        }
        p = mmap(NULL, want, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
                r = kvb_fail(err, errlen, -errno, "%s: cannot map %zu bytes of %s: %s", name, want, path,
                             strerror(errno));
                goto out_close;
        }
        *ret = p;
        *ret_len = want;
        r = 0;
out_close:
        close(fd);
        return r;
}

static bool f16_finite(uint16_t h)
{
        return (h & 0x7c00u) != 0x7c00u;
}

/* Index of the first NaN or Inf among n fp16s, or n. Chunks are checked
 * branch-free first (the compiler vectorises that loop): a trace is large. */
static size_t first_nonfinite(const uint16_t *p, size_t n)
{
        enum { CHUNK = 4096 };

        for (size_t base = 0; base < n; base += CHUNK) {
                size_t len = n - base < CHUNK ? n - base : CHUNK;
                unsigned bad = 0;

                for (size_t i = 0; i < len; i++)
                        bad |= (p[base + i] & 0x7c00u) == 0x7c00u;
                if (!bad)
                        continue;
                for (size_t i = 0; i < len; i++)
                        if (!f16_finite(p[base + i]))
                                return base + i;
        }
        return n;
}

static int scan_array(const struct kvb_trace_meta *m, enum kvb_trace_array a, const uint16_t *p, size_t n,
                      char *err, size_t errlen)
{
        size_t i = first_nonfinite(p, n), row = i / m->head_dim;
        uint32_t d = (uint32_t)(i % m->head_dim);
        const char *what;

        if (i == n)
                return 0;
        what = (p[i] & 0x3ffu) ? "NaN" : (p[i] & 0x8000u) ? "-Inf" : "+Inf";
        if (a == KVB_TRACE_Q) {
                uint32_t qh = (uint32_t)(row % m->q_heads), l = (uint32_t)(row / m->q_heads % m->layers);
                uint32_t step = (uint32_t)(row / m->q_heads / m->layers);

                return kvb_fail(err, errlen, -EINVAL,
                                "%s: element %zu (byte offset %zu: step %" PRIu32 ", layer %" PRIu32 ", q head %" PRIu32
                                ", dim %" PRIu32 ") is %s (0x%04x)",
                                array_names[a], i, i * 2, step, l, qh, d, what, p[i]);
        }
        {
                uint32_t t = (uint32_t)(row % m->tokens), h = (uint32_t)(row / m->tokens % m->kv_heads);
                uint32_t l = (uint32_t)(row / m->tokens / m->kv_heads);

                return kvb_fail(err, errlen, -EINVAL,
                                "%s: element %zu (byte offset %zu: layer %" PRIu32 ", kv head %" PRIu32
                                ", token %" PRIu32 ", dim %" PRIu32 ") is %s (0x%04x)",
                                array_names[a], i, i * 2, l, h, t, d, what, p[i]);
        }
}

int kvb_trace_open(const char *dir, struct kvb_trace **ret, char *err, size_t errlen)
{
        static const char kv_formula[] = "layers * kv_heads * tokens * head_dim";
        static const char q_formula[] = "steps * layers * q_heads * head_dim";
        struct kvb_trace *t;
        size_t kv_elems, q_elems;
        int r;

        if (!dir || !ret)
                return kvb_fail(err, errlen, -EINVAL, "trace: no directory given");
        t = calloc(1, sizeof(*t));
        if (!t)
                return kvb_fail(err, errlen, -ENOMEM, "trace: out of memory");
        r = meta_load(dir, &t->meta, err, errlen);
        if (r < 0)
                goto err_free;
        r = kvb_trace_meta_check(&t->meta, &kv_elems, &q_elems, err, errlen);
        if (r < 0)
                goto err_free;
        if ((r = map_array(dir, KVB_TRACE_K, kv_elems, kv_formula, &t->k, &t->k_len, err, errlen)) < 0 ||
            (r = map_array(dir, KVB_TRACE_V, kv_elems, kv_formula, &t->v, &t->v_len, err, errlen)) < 0 ||
            (r = map_array(dir, KVB_TRACE_Q, q_elems, q_formula, &t->q, &t->q_len, err, errlen)) < 0)
                goto err_free;
        if ((r = scan_array(&t->meta, KVB_TRACE_K, t->k, kv_elems, err, errlen)) < 0 ||
            (r = scan_array(&t->meta, KVB_TRACE_V, t->v, kv_elems, err, errlen)) < 0 ||
            (r = scan_array(&t->meta, KVB_TRACE_Q, t->q, q_elems, err, errlen)) < 0)
                goto err_free;
        *ret = t;
        return 0;
err_free:
        kvb_trace_close(t);
        return r;
}

struct kvb_trace *kvb_trace_close(struct kvb_trace *t)
{
        if (!t)
                return NULL;
        if (t->k)
                munmap((void *)t->k, t->k_len);
        if (t->v)
                munmap((void *)t->v, t->v_len);
        if (t->q)
                munmap((void *)t->q, t->q_len);
        free(t);
        return NULL;
}

/* ---- writing ------------------------------------------------------------ */

struct kvb_trace_writer {
        char *dir;
        struct kvb_trace_meta meta;
        int fd[3];
        size_t elems[3];        /* each array's size */
        size_t put[3];          /* elements written so far */
};

struct kvb_trace_writer *kvb_trace_writer_free(struct kvb_trace_writer *w)
{
        if (!w)
                return NULL;
        for (int a = 0; a < 3; a++)
                if (w->fd[a] >= 0)
                        close(w->fd[a]);
        free(w->dir);
        free(w);
        return NULL;
}

static int make_dir(const char *dir, char *err, size_t errlen)
{
        struct stat st;

        if (mkdir(dir, 0777) == 0)
                return 0;
        if (errno != EEXIST)
                return kvb_fail(err, errlen, -errno, "trace: cannot create directory %s: %s", dir, strerror(errno));
        if (stat(dir, &st) < 0)
                return kvb_fail(err, errlen, -errno, "trace: cannot stat %s: %s", dir, strerror(errno));
        if (!S_ISDIR(st.st_mode))
                return kvb_fail(err, errlen, -ENOTDIR, "trace: %s exists and is not a directory", dir);
        return 0;
}

int kvb_trace_writer_open(const char *dir, const struct kvb_trace_meta *m, struct kvb_trace_writer **ret,
                          char *err, size_t errlen)
{
        struct kvb_trace_writer *w;
        char path[PATH_MAX];
        size_t kv_elems, q_elems;
        int r;

        if (!dir || !m || !ret)
                return kvb_fail(err, errlen, -EINVAL, "trace: no directory or meta given");
        r = kvb_trace_meta_check(m, &kv_elems, &q_elems, err, errlen);
        if (r < 0)
                return r;
        w = calloc(1, sizeof(*w));
        if (!w)
                return kvb_fail(err, errlen, -ENOMEM, "trace: out of memory");
        w->fd[0] = w->fd[1] = w->fd[2] = -1;
        w->meta = *m;
        w->elems[KVB_TRACE_K] = w->elems[KVB_TRACE_V] = kv_elems;
        w->elems[KVB_TRACE_Q] = q_elems;
        w->dir = strdup(dir);
        if (!w->dir) {
                r = kvb_fail(err, errlen, -ENOMEM, "trace: out of memory");
                goto err_free;
        }
        r = make_dir(dir, err, errlen);
        if (r < 0)
                goto err_free;
        /* No meta.json until finish: a trace cut short must not open. */
        if (path_join(path, sizeof(path), dir, "meta.json") < 0) {
                r = kvb_fail(err, errlen, -ENAMETOOLONG, "trace: path too long: %s/meta.json", dir);
                goto err_free;
        }
        if (unlink(path) < 0 && errno != ENOENT) {
                r = kvb_fail(err, errlen, -errno, "meta.json: cannot remove the old %s: %s", path, strerror(errno));
                goto err_free;
        }
        for (int a = 0; a < 3; a++) {
                if (path_join(path, sizeof(path), dir, array_names[a]) < 0) {
                        r = kvb_fail(err, errlen, -ENAMETOOLONG, "trace: path too long: %s/%s", dir, array_names[a]);
                        goto err_free;
                }
                w->fd[a] = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
                if (w->fd[a] < 0) {
                        r = kvb_fail(err, errlen, -errno, "%s: cannot create %s: %s", array_names[a], path,
                                     strerror(errno));
                        goto err_free;
                }
        }
        *ret = w;
        return 0;
err_free:
        kvb_trace_writer_free(w);
        return r;
}

int kvb_trace_writer_put(struct kvb_trace_writer *w, enum kvb_trace_array a, size_t off, const uint16_t *data,
                         size_t n, char *err, size_t errlen)
{
        const char *p = (const char *)data;
        size_t left = n * sizeof(uint16_t);
        off_t pos;

        if (!w || (unsigned)a > KVB_TRACE_Q || (!data && n > 0))
                return kvb_fail(err, errlen, -EINVAL, "trace: bad writer arguments");
        if (w->fd[a] < 0)
                return kvb_fail(err, errlen, -EBADF, "%s: already closed", array_names[a]);
        if (off > w->elems[a] || n > w->elems[a] - off)
                return kvb_fail(err, errlen, -EINVAL, "%s: elements [%zu, %zu) are past its end (%zu elements)",
                                array_names[a], off, off + n, w->elems[a]);
        pos = (off_t)(off * sizeof(uint16_t));
        while (left > 0) {
                ssize_t k = pwrite(w->fd[a], p, left, pos);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return kvb_fail(err, errlen, -errno, "%s: write failed: %s", array_names[a], strerror(errno));
                if (k == 0)
                        return kvb_fail(err, errlen, -EIO, "%s: write wrote nothing", array_names[a]);
                p += k;
                pos += k;
                left -= (size_t)k;
        }
        w->put[a] += n;
        return 0;
}

static json_t *meta_json(const struct kvb_trace_meta *m, json_t *extra)
{
        json_t *o = json_object();

        if (!o)
                return NULL;
        /* Insertion order is kept on output: the shape first, as documented. */
        if (json_object_set_new(o, "layers", json_integer(m->layers)) < 0 ||
            json_object_set_new(o, "kv_heads", json_integer(m->kv_heads)) < 0 ||
            json_object_set_new(o, "q_heads", json_integer(m->q_heads)) < 0 ||
            json_object_set_new(o, "head_dim", json_integer(m->head_dim)) < 0 ||
            json_object_set_new(o, "tokens", json_integer(m->tokens)) < 0 ||
            json_object_set_new(o, "steps", json_integer(m->steps)) < 0 ||
            json_object_set_new(o, "dtype", json_string("f16")) < 0 ||
            (extra && json_object_update_missing(o, extra) < 0)) {
                json_decref(o);
                return NULL;
        }
        return o;
}

int kvb_trace_writer_finish(struct kvb_trace_writer *w, struct json_t *extra, char *err, size_t errlen)
{
        char path[PATH_MAX], tmp[PATH_MAX];
        json_t *o;
        int r = 0;

        if (!w)
                return kvb_fail(err, errlen, -EINVAL, "trace: no writer");
        if (extra && !json_is_object(extra))
                return kvb_fail(err, errlen, -EINVAL, "meta.json: extra keys must be a JSON object");
        for (int a = 0; a < 3; a++) {
                if (w->fd[a] >= 0 && w->put[a] != w->elems[a])
                        return kvb_fail(err, errlen, -EINVAL, "%s: %zu elements written, %zu expected", array_names[a],
                                        w->put[a], w->elems[a]);
        }
        for (int a = 0; a < 3; a++) {
                int fd = w->fd[a];

                if (fd < 0)
                        continue;
                w->fd[a] = -1;
                /* close() reports the write errors of some file systems (NFS). */
                if (close(fd) < 0 && r == 0)
                        r = kvb_fail(err, errlen, -errno, "%s: close failed: %s", array_names[a], strerror(errno));
        }
        if (r < 0)
                return r;
        if (path_join(path, sizeof(path), w->dir, "meta.json") < 0 ||
            path_join(tmp, sizeof(tmp), w->dir, ".meta.json.tmp") < 0)
                return kvb_fail(err, errlen, -ENAMETOOLONG, "trace: path too long: %s/meta.json", w->dir);
        o = meta_json(&w->meta, extra);
        if (!o)
                return kvb_fail(err, errlen, -ENOMEM, "meta.json: out of memory");
        /* Written aside and renamed: meta.json is whole or absent. */
        errno = 0;
        if (json_dump_file(o, tmp, JSON_INDENT(2)) < 0) {
                r = kvb_fail(err, errlen, errno > 0 ? -errno : -EIO, "meta.json: cannot write %s: %s", tmp,
                             errno > 0 ? strerror(errno) : "I/O error");
                unlink(tmp);
                goto out_decref;
        }
        if (rename(tmp, path) < 0) {
                r = kvb_fail(err, errlen, -errno, "meta.json: cannot rename %s to %s: %s", tmp, path, strerror(errno));
                unlink(tmp);
                goto out_decref;
        }
        r = 0;
out_decref:
        json_decref(o);
        return r;
}

int kvb_trace_write(const char *dir, const struct kvb_trace_meta *m, const uint16_t *k, const uint16_t *v,
                    const uint16_t *q, char *err, size_t errlen)
{
        struct kvb_trace_writer *w = NULL;
        size_t kv_elems, q_elems;
        int r;

        if (!m || !k || !v || !q)
                return kvb_fail(err, errlen, -EINVAL, "trace: missing meta or array");
        r = kvb_trace_meta_check(m, &kv_elems, &q_elems, err, errlen);
        if (r < 0)
                return r;
        r = kvb_trace_writer_open(dir, m, &w, err, errlen);
        if (r < 0)
                return r;
        if ((r = kvb_trace_writer_put(w, KVB_TRACE_K, 0, k, kv_elems, err, errlen)) < 0 ||
            (r = kvb_trace_writer_put(w, KVB_TRACE_V, 0, v, kv_elems, err, errlen)) < 0 ||
            (r = kvb_trace_writer_put(w, KVB_TRACE_Q, 0, q, q_elems, err, errlen)) < 0)
                goto out_free;
        r = kvb_trace_writer_finish(w, NULL, err, errlen);
out_free:
        kvb_trace_writer_free(w);
        return r;
}
