/* SPDX-License-Identifier: MIT */
/*
 * examples/sparse-engine against a real daemon: it runs to the end, its
 * sparse attention stays close to full attention, a second process with
 * the same prompt finds all of it cached and computes none of it, and a
 * changed model (another weights revision: another namespace) finds none.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check-main.h"
#include "common.h"

#define RUN_TIMEOUT_MS 60000
#define MAX_REL_ERROR 0.02      /* the defaults give about 4e-3 */

struct run {
        unsigned tokens, full, computed, tail, checked;
        int cached;
        double err_max, err_mean;
};

static const char *example_path(void)
{
        const char *p = getenv("KVDRIVE_EXAMPLE_SPARSE_ENGINE");

        ck_assert_msg(p && *p, "$KVDRIVE_EXAMPLE_SPARSE_ENGINE is not set (run the tests with meson test)");
        return p;
}

/* The line of out that starts with prefix, or NULL. */
static const char *line_of(const char *out, const char *prefix)
{
        size_t n = strlen(prefix);

        for (const char *l = out; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                if (strncmp(l, prefix, n) == 0)
                        return l;
        return NULL;
}

/* Runs the example with the fixture's socket and extra arguments, asserts it
 * exits 0, and reads its prompt and check lines. */
static void run_example(const struct kvd_test_daemon *d, const char *revision, struct run *ret)
{
        const char *argv[] = { example_path(), "--socket", d->socket_path, "--steps", "40", "--check-every", "8",
                               "--model-revision", revision, NULL };
        const char *p, *c;
        char *out = NULL, why[96];
        int status, r;

        r = kvd_test_run_capture(argv, RUN_TIMEOUT_MS, &out, &status);
        ck_assert_msg(r == 0, "sparse-engine: %s", strerror(-r));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sparse-engine: %s; stdout:\n%s",
                      kvd_test_status_str(status, why, sizeof(why)), out);
        p = line_of(out, "prompt: ");
        c = line_of(out, "check: ");
        ck_assert_msg(p && sscanf(p, "prompt: %u tokens, %u full blocks: %d cached, %u computed, %u tokens in the tail",
                                  &ret->tokens, &ret->full, &ret->cached, &ret->computed, &ret->tail) == 5,
                      "no prompt line in:\n%s", out);
        ck_assert_msg(c && sscanf(c, "check: %u layers against full attention: relative error max %lf, mean %lf",
                                  &ret->checked, &ret->err_max, &ret->err_mean) == 3,
                      "no check line in:\n%s", out);
        ck_assert_msg(line_of(out, "kvc_sparse: ") && strstr(line_of(out, "kvc_sparse: "), " 0 layers lost a block"),
                      "a layer lost a block:\n%s", out);
        free(out);
}

START_TEST(test_second_run_computes_nothing)
{
        struct kvd_test_daemon d;
        struct run a, b, other;

        E2E_START(&d);
        run_example(&d, "r1", &a);
        ck_assert_uint_eq(a.tokens, 4103);              /* the defaults: 256 blocks and 7 tokens */
        ck_assert_uint_eq(a.full, 256);
        ck_assert_int_eq(a.cached, 0);
        ck_assert_uint_eq(a.computed, 256);
        ck_assert_uint_eq(a.tail, 7);
        ck_assert_uint_eq(a.checked, 5 * 8);            /* steps 0, 8, .. 32, every layer */
        ck_assert_msg(a.err_max < MAX_REL_ERROR, "relative error %g against full attention", a.err_max);
        /* Another process, the same model and prompt: all of it cached. */
        run_example(&d, "r1", &b);
        ck_assert_int_eq(b.cached, 256);
        ck_assert_uint_eq(b.computed, 0);
        ck_assert_msg(b.err_max < MAX_REL_ERROR, "relative error %g against full attention", b.err_max);
        /* Other weights: another namespace, nothing of the old model read. */
        run_example(&d, "r2", &other);
        ck_assert_int_eq(other.cached, 0);
        ck_assert_uint_eq(other.computed, 256);
        ck_assert_msg(other.err_max < MAX_REL_ERROR, "relative error %g against full attention", other.err_max);
        E2E_STOP(&d);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("example");
        TCase *tc = tcase_create("sparse-engine");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_second_run_computes_nothing);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(suite)
