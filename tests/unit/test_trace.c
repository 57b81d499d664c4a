/* SPDX-License-Identifier: MIT */
/*
 * Decode traces (tools/kvdrive-bench/trace.h): write and open round trip,
 * every malformed trace refused with a message that names the problem.
 * The generator's tests are test_gen.c.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels.h"
#include "tools/kvdrive-bench/trace.h"

#include "check-main.h"
#include "trace-test.h"


/* ---- helpers -------------------------------------------------------------- */

/* The small trace of the bad-input tests: 2 layers, 2/4 heads, 8 dims,
 * 16 tokens, 4 steps. */
static const struct kvb_trace_meta small = {
        .layers = 2, .kv_heads = 2, .q_heads = 4, .head_dim = 8, .tokens = 16, .steps = 4,
};
#define SMALL_KV (2u * 2 * 16 * 8)
#define SMALL_Q (4u * 2 * 4 * 8)

static uint16_t small_k[SMALL_KV], small_v[SMALL_KV], small_q[SMALL_Q];

static void small_fill(void)
{
        for (unsigned i = 0; i < SMALL_KV; i++) {
                small_k[i] = kvk_f32_to_f16((float)((int)(i % 17) - 8) / 4.0f);
                small_v[i] = kvk_f32_to_f16((float)(i % 5) - 2.5f);
        }
        for (unsigned i = 0; i < SMALL_Q; i++)
                small_q[i] = kvk_f32_to_f16((float)(i % 7) * 0.125f);
}

static void write_small(const char *dir)
{
        char err[ERRLEN] = "";

        small_fill();
        ck_assert_msg(kvb_trace_write(dir, &small, small_k, small_v, small_q, err, sizeof(err)) == 0, "%s", err);
}

/* The valid meta.json of `small`, with key `skip` left out and key `key`
 * given the JSON text `value` (either may be NULL). */
static void small_meta_text(char *buf, size_t size, const char *skip, const char *key, const char *value)
{
        static const char *const keys[] = { "layers", "kv_heads", "q_heads", "head_dim", "tokens", "steps", "dtype" };
        static const char *const vals[] = { "2", "2", "4", "8", "16", "4", "\"f16\"" };
        size_t n = 0;
        bool first = true;

        n += (size_t)snprintf(buf + n, size - n, "{");
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                if (skip && strcmp(keys[i], skip) == 0)
                        continue;
                n += (size_t)snprintf(buf + n, size - n, "%s\"%s\": %s", first ? "" : ", ", keys[i],
                                      key && strcmp(keys[i], key) == 0 ? value : vals[i]);
                first = false;
        }
        snprintf(buf + n, size - n, "}\n");
}

/* kvb_trace_open(dir) fails with want (or any error for 0), leaves *ret as
 * it was, and its message contains every one of the NULL-terminated words. */
static void expect_open_fails(const char *dir, int want, ...)
{
        struct kvb_trace *sentinel = (struct kvb_trace *)(uintptr_t)0x1234, *t = sentinel;
        char err[ERRLEN] = "";
        const char *word;
        va_list ap;
        int r;

        r = kvb_trace_open(dir, &t, err, sizeof(err));
        ck_assert_msg(r < 0, "opened a bad trace (expected an error)");
        if (want)
                ck_assert_msg(r == want, "returned %d (%s), expected %d: %s", r, strerror(-r), want, err);
        ck_assert_ptr_eq(t, sentinel);
        va_start(ap, want);
        while ((word = va_arg(ap, const char *)))
                ck_assert_msg(strstr(err, word), "error \"%s\" does not mention \"%s\"", err, word);
        va_end(ap);
}

static void expect_meta_fails(const char *dir, const char *text, const char *w1, const char *w2)
{
        write_text(dir, "meta.json", text);
        expect_open_fails(dir, -EINVAL, "meta.json", w1, w2, (const char *)NULL);
}

/* ---- write / open ----------------------------------------------------------- */

START_TEST(test_round_trip)
{
        struct kvb_trace *t = NULL;
        char dir[256], err[ERRLEN] = "";

        make_tmpdir(dir, sizeof(dir));
        write_small(dir);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        ck_assert_int_eq(memcmp(&t->meta, &small, sizeof(small)), 0);
        ck_assert_int_eq(memcmp(t->k, small_k, sizeof(small_k)), 0);
        ck_assert_int_eq(memcmp(t->v, small_v, sizeof(small_v)), 0);
        ck_assert_int_eq(memcmp(t->q, small_q, sizeof(small_q)), 0);
        ck_assert_uint_eq(kvb_kv_index(&t->meta, 1, 1, 15), SMALL_KV - 8);
        ck_assert_uint_eq(kvb_q_index(&t->meta, 3, 1, 3), SMALL_Q - 8);
        ck_assert_ptr_null(kvb_trace_close(t));
        ck_assert_ptr_null(kvb_trace_close(NULL));

        /* Unknown keys (any type, nested) are ignored; key order is free. */
        write_text(dir, "meta.json",
                   "{\"dtype\": \"f16\", \"model\": {\"name\": \"x\", \"rope\": [1, 2.5]}, \"steps\": 4, "
                   "\"tokens\": 16, \"head_dim\": 8, \"q_heads\": 4, \"kv_heads\": 2, \"layers\": 2, "
                   "\"comment\": null}");
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        ck_assert_uint_eq(t->meta.q_heads, 4);
        kvb_trace_close(t);

        /* Writing again over a trace replaces it. */
        write_small(dir);
        ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
        kvb_trace_close(t);
        rm_dir(dir);
}
END_TEST

START_TEST(test_missing_files)
{
        static const char *const names[] = { "k.bin", "v.bin", "q.bin", "meta.json" };
        char dir[256], path[512];

        make_tmpdir(dir, sizeof(dir));
        for (size_t i = 0; i < 4; i++) {
                write_small(dir);
                path_in(path, sizeof(path), dir, names[i]);
                ck_assert_int_eq(unlink(path), 0);
                expect_open_fails(dir, -ENOENT, names[i], "No such file", (const char *)NULL);
        }
        rm_dir(dir);
        expect_open_fails(dir, -ENOENT, "meta.json", (const char *)NULL);
}
END_TEST

START_TEST(test_wrong_sizes)
{
        static const char *const names[] = { "k.bin", "v.bin", "q.bin" };
        char dir[256], path[512];

        make_tmpdir(dir, sizeof(dir));
        for (size_t i = 0; i < 3; i++) {
                struct stat st;

                write_small(dir);
                path_in(path, sizeof(path), dir, names[i]);
                ck_assert_int_eq(stat(path, &st), 0);
                ck_assert_int_eq(truncate(path, st.st_size - 2), 0);
                expect_open_fails(dir, -EINVAL, names[i], "too short", "meta.json implies", (const char *)NULL);
                ck_assert_int_eq(truncate(path, st.st_size + 2), 0);
                expect_open_fails(dir, -EINVAL, names[i], "too long", (const char *)NULL);
                ck_assert_int_eq(truncate(path, 0), 0);
                expect_open_fails(dir, -EINVAL, names[i], "too short", (const char *)NULL);
                /* A directory in place of the file. */
                ck_assert_int_eq(unlink(path), 0);
                ck_assert_int_eq(mkdir(path, 0700), 0);
                expect_open_fails(dir, -EINVAL, names[i], "not a regular file", (const char *)NULL);
                ck_assert_int_eq(rmdir(path), 0);
        }
        rm_dir(dir);
}
END_TEST

START_TEST(test_meta_not_json)
{
        char dir[256];

        make_tmpdir(dir, sizeof(dir));
        write_small(dir);
        expect_meta_fails(dir, "{\"layers\": 2,", "not valid JSON", NULL);
        expect_meta_fails(dir, "", "not valid JSON", NULL);
        expect_meta_fails(dir, "layers=2\n", "not valid JSON", NULL);
        expect_meta_fails(dir, "{\"layers\": 2, \"layers\": 3}", "not valid JSON", "duplicate");
        expect_meta_fails(dir, "[2, 2, 4, 8, 16, 4]", "JSON object", "an array");
        rm_dir(dir);
}
END_TEST

START_TEST(test_meta_missing_key)
{
        static const char *const keys[] = { "layers", "kv_heads", "q_heads", "head_dim", "tokens", "steps", "dtype" };
        char dir[256], text[512];

        make_tmpdir(dir, sizeof(dir));
        write_small(dir);
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                char quoted[32];

                snprintf(quoted, sizeof(quoted), "\"%s\"", keys[i]);
                small_meta_text(text, sizeof(text), keys[i], NULL, NULL);
                expect_meta_fails(dir, text, "missing key", quoted);
        }
        rm_dir(dir);
}
END_TEST

START_TEST(test_meta_wrong_type)
{
        static const struct {
                const char *key, *value, *what;
        } cases[] = {
                { "layers", "\"2\"", "a string" },   { "kv_heads", "2.0", "a real number" },
                { "q_heads", "true", "a boolean" },  { "head_dim", "null", "null" },
                { "tokens", "[16]", "an array" },    { "steps", "{\"n\": 4}", "an object" },
                { "dtype", "16", "an integer" },     { "dtype", "[\"f16\"]", "an array" },
        };
        char dir[256], text[512];

        make_tmpdir(dir, sizeof(dir));
        write_small(dir);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                small_meta_text(text, sizeof(text), NULL, cases[i].key, cases[i].value);
                expect_meta_fails(dir, text, cases[i].key, cases[i].what);
        }
        rm_dir(dir);
}
END_TEST

START_TEST(test_meta_bad_values)
{
        static const char *const keys[] = { "layers", "kv_heads", "q_heads", "head_dim", "tokens", "steps" };
        char dir[256], text[512];

        make_tmpdir(dir, sizeof(dir));
        write_small(dir);
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
                small_meta_text(text, sizeof(text), NULL, keys[i], "0");
                expect_meta_fails(dir, text, keys[i], "positive");
                small_meta_text(text, sizeof(text), NULL, keys[i], "-3");
                expect_meta_fails(dir, text, keys[i], "-3");
                small_meta_text(text, sizeof(text), NULL, keys[i], "4294967296");
                expect_meta_fails(dir, text, keys[i], "too large");
        }
        /* GQA. */
        small_meta_text(text, sizeof(text), NULL, "q_heads", "3");
        expect_meta_fails(dir, text, "q_heads (3) is not a multiple of kv_heads (2)", NULL);
        /* The prompt needs a token. */
        small_meta_text(text, sizeof(text), NULL, "steps", "16");
        expect_meta_fails(dir, text, "steps (16) must be less than tokens (16)", NULL);
        small_meta_text(text, sizeof(text), NULL, "steps", "17");
        expect_meta_fails(dir, text, "steps (17) must be less than tokens (16)", NULL);
        /* dtype. */
        small_meta_text(text, sizeof(text), NULL, "dtype", "\"bf16\"");
        expect_meta_fails(dir, text, "dtype \"bf16\" is not supported", "f16");
        small_meta_text(text, sizeof(text), NULL, "dtype", "\"f32\"");
        expect_meta_fails(dir, text, "dtype \"f32\" is not supported", NULL);
        /* Sizes beyond size_t. */
        expect_meta_fails(dir,
                          "{\"layers\": 4294967295, \"kv_heads\": 4294967295, \"q_heads\": 4294967295, "
                          "\"head_dim\": 4294967295, \"tokens\": 4294967295, \"steps\": 1, \"dtype\": \"f16\"}",
                          "k.bin", "overflows");
        expect_meta_fails(dir,
                          "{\"layers\": 65536, \"kv_heads\": 1, \"q_heads\": 4294967295, "
                          "\"head_dim\": 65536, \"tokens\": 65537, \"steps\": 65536, \"dtype\": \"f16\"}",
                          "q.bin", "overflows");
        rm_dir(dir);
}
END_TEST

/* Rewrites element i of array name with the fp16 bits h. */
static void poke(const char *dir, const char *name, size_t i, uint16_t h)
{
        char path[512];
        int fd;

        path_in(path, sizeof(path), dir, name);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pwrite(fd, &h, 2, (off_t)(i * 2)), 2);
        close(fd);
}

START_TEST(test_nonfinite)
{
        char dir[256];

        make_tmpdir(dir, sizeof(dir));

        /* A NaN in k.bin: layer 1, kv head 0, token 5, dim 3. */
        write_small(dir);
        poke(dir, "k.bin", kvb_kv_index(&small, 1, 0, 5) + 3, 0x7e00);
        poke(dir, "k.bin", SMALL_KV - 1, 0x7c00);       /* a later Inf: the first bad one is reported */
        expect_open_fails(dir, -EINVAL, "k.bin", "element 299 ", "layer 1, kv head 0, token 5, dim 3", "NaN",
                          (const char *)NULL);

        /* An Inf in q.bin: step 2, layer 1, q head 3, dim 7. */
        write_small(dir);
        poke(dir, "q.bin", kvb_q_index(&small, 2, 1, 3) + 7, 0x7c00);
        expect_open_fails(dir, -EINVAL, "q.bin", "step 2, layer 1, q head 3, dim 7", "+Inf", (const char *)NULL);

        /* -Inf and a signalling NaN in v.bin, the very first and last elements. */
        write_small(dir);
        poke(dir, "v.bin", 0, 0xfc00);
        expect_open_fails(dir, -EINVAL, "v.bin", "element 0 ", "-Inf", (const char *)NULL);
        write_small(dir);
        poke(dir, "v.bin", SMALL_KV - 1, 0xfc01);
        expect_open_fails(dir, -EINVAL, "v.bin", "element 511", "NaN", (const char *)NULL);

        /* The largest finite and the subnormals are fine. */
        write_small(dir);
        poke(dir, "k.bin", 0, 0x7bff);
        poke(dir, "k.bin", 1, 0xfbff);
        poke(dir, "q.bin", 0, 0x0001);
        {
                struct kvb_trace *t = NULL;
                char err[ERRLEN] = "";

                ck_assert_msg(kvb_trace_open(dir, &t, err, sizeof(err)) == 0, "%s", err);
                kvb_trace_close(t);
        }
        rm_dir(dir);
}
END_TEST

START_TEST(test_writer_errors)
{
        struct kvb_trace_writer *w = NULL;
        struct kvb_trace_meta m = small;
        char dir[256], sub[512], err[ERRLEN] = "", path[600];
        json_t *extra;
        size_t len;
        char *text;

        make_tmpdir(dir, sizeof(dir));
        small_fill();

        /* Bad meta: nothing written. */
        m.q_heads = 5;
        ck_assert_int_eq(kvb_trace_write(dir, &m, small_k, small_v, small_q, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "not a multiple"));
        m = small;
        m.steps = 0;
        ck_assert_int_eq(kvb_trace_write(dir, &m, small_k, small_v, small_q, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "\"steps\""));

        /* One level of directory is created, not two. */
        snprintf(sub, sizeof(sub), "%s/a/b", dir);
        ck_assert_int_eq(kvb_trace_write(sub, &small, small_k, small_v, small_q, err, sizeof(err)), -ENOENT);
        ck_assert_ptr_nonnull(strstr(err, "cannot create directory"));
        /* A file where the directory should be. */
        snprintf(sub, sizeof(sub), "%s/file", dir);
        write_text(dir, "file", "x");
        ck_assert_int_eq(kvb_trace_write(sub, &small, small_k, small_v, small_q, err, sizeof(err)), -ENOTDIR);
        ck_assert_int_eq(unlink(sub), 0);

        /* A writer: out of range, incomplete, then complete with extra keys. */
        snprintf(sub, sizeof(sub), "%s/t", dir);
        write_small(sub);
        ck_assert_int_eq(kvb_trace_writer_open(sub, &small, &w, err, sizeof(err)), 0);
        path_in(path, sizeof(path), sub, "meta.json");
        ck_assert_int_eq(access(path, F_OK), -1);       /* the old meta.json is gone at once */
        ck_assert_int_eq(kvb_trace_writer_put(w, KVB_TRACE_Q, 1, small_q, SMALL_Q, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "past its end"));
        ck_assert_int_eq(kvb_trace_writer_put(w, KVB_TRACE_K, 0, small_k, SMALL_KV, err, sizeof(err)), 0);
        ck_assert_int_eq(kvb_trace_writer_put(w, KVB_TRACE_V, SMALL_KV / 2, small_v + SMALL_KV / 2, SMALL_KV / 2, err,
                                              sizeof(err)), 0);
        ck_assert_int_eq(kvb_trace_writer_finish(w, NULL, err, sizeof(err)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(err, "v.bin"));
        ck_assert_int_eq(kvb_trace_writer_put(w, KVB_TRACE_V, 0, small_v, SMALL_KV / 2, err, sizeof(err)), 0);
        ck_assert_int_eq(kvb_trace_writer_put(w, KVB_TRACE_Q, 0, small_q, SMALL_Q, err, sizeof(err)), 0);
        extra = json_pack("{s:s, s:i}", "source", "unit test", "layers", 99);
        ck_assert_ptr_nonnull(extra);
        ck_assert_msg(kvb_trace_writer_finish(w, extra, err, sizeof(err)) == 0, "%s", err);
        json_decref(extra);
        ck_assert_ptr_null(kvb_trace_writer_free(w));
        ck_assert_ptr_null(kvb_trace_writer_free(NULL));
        text = read_file(path, &len);
        text = realloc(text, len + 1);
        text[len] = '\0';
        ck_assert_ptr_nonnull(strstr(text, "\"source\": \"unit test\""));
        ck_assert_ptr_nonnull(strstr(text, "\"layers\": 2"));   /* extra keys never override the shape */
        free(text);
        {
                struct kvb_trace *t = NULL;

                ck_assert_msg(kvb_trace_open(sub, &t, err, sizeof(err)) == 0, "%s", err);
                ck_assert_int_eq(memcmp(t->v, small_v, sizeof(small_v)), 0);
                kvb_trace_close(t);
        }

        /* A writer freed before finish leaves no meta.json: the trace does not open. */
        ck_assert_int_eq(kvb_trace_writer_open(sub, &small, &w, err, sizeof(err)), 0);
        kvb_trace_writer_free(w);
        expect_open_fails(sub, -ENOENT, "meta.json", (const char *)NULL);
        rm_dir(sub);
        rm_dir(dir);
}
END_TEST

static Suite *trace_suite(void)
{
        Suite *s = suite_create("trace");
        TCase *tc = tcase_create("trace");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_round_trip);
        tcase_add_test(tc, test_missing_files);
        tcase_add_test(tc, test_wrong_sizes);
        tcase_add_test(tc, test_meta_not_json);
        tcase_add_test(tc, test_meta_missing_key);
        tcase_add_test(tc, test_meta_wrong_type);
        tcase_add_test(tc, test_meta_bad_values);
        tcase_add_test(tc, test_nonfinite);
        tcase_add_test(tc, test_writer_errors);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(trace_suite)
