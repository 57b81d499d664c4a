/* SPDX-License-Identifier: MIT */
/*
 * kvdrivectl against a live daemon: `status` and `stats --json` report what
 * was stored.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "check-main.h"
#include "common.h"

#define NS_NAME "e2e-ctl-model"
#define NBLK    10u
#define NITEMS  (NBLK * 2u)     /* layers 0 and 1 */
#define CTL_TIMEOUT_MS 20000

static const char *ctl_path(void)
{
        const char *p = getenv("KVDRIVECTL");

        ck_assert_msg(p && *p, "$KVDRIVECTL is not set (run the tests with meson test)");
        return p;
}

/* Runs kvdrivectl --socket sock args...; returns its stdout (free it). */
static char *run_ctl(const char *sock, const char *a1, const char *a2, int *ret_status)
{
        const char *argv[] = { ctl_path(), "--socket", sock, a1, a2, NULL };
        char *out = NULL;
        int rc = kvd_test_run_capture(argv, CTL_TIMEOUT_MS, &out, ret_status);

        ck_assert_msg(rc == 0, "running %s: %s", argv[0], strerror(-rc));
        return out;
}

static void put_blocks(struct kvd_test_daemon *d)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        struct kvc_key seq;
        uint32_t ns;

        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        ck_assert_int_eq(e2e_open(d->socket_path, "ctl-writer", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, NITEMS, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < NITEMS; i++) {
                refs[i] = (struct kvc_block_ref){ .layer = i % 2, .slot = i };
                kvc_key_private(&seq, i / 2, &refs[i].key);
                ck_assert_int_eq(e2e_random(kvc_pool_slot(p, i), E2E_BLOCK_BYTES), 0);
        }
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, NITEMS, st), (int)NITEMS);
        /* Re-Puts copy nothing: they must not count as bytes in. */
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, 5, st), 0);
        kvc_pool_free(p);
        kvc_disconnect(c);
}

static json_int_t json_path_int(json_t *root, const char *a, const char *b, const char *c,
                                const char *what)
{
        json_t *v = json_object_get(root, a);

        if (b && v)
                v = json_is_array(v) ? json_array_get(v, 0) : json_object_get(v, b);
        if (c && v)
                v = json_object_get(v, c);
        ck_assert_msg(v && json_is_integer(v), "stats --json has no integer %s", what);
        return json_integer_value(v);
}

START_TEST(test_stats_json)
{
        struct kvd_test_daemon d;
        json_error_t jerr;
        json_t *root, *nss, *ns0;
        char *out;
        int st;

        E2E_START(&d);
        put_blocks(&d);
        out = run_ctl(d.socket_path, "stats", "--json", &st);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvdrivectl stats --json: status 0x%x",
                      (unsigned)st);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "stats --json is not JSON (line %d: %s): %s", jerr.line, jerr.text,
                      out);
        ck_assert_int_eq(json_path_int(root, "tiers", "host", "blocks", "tiers.host.blocks"),
                         NITEMS);
        nss = json_object_get(root, "namespaces");
        ck_assert_msg(json_is_array(nss) && json_array_size(nss) == 1,
                      "namespaces is not an array of one: %s", out);
        ns0 = json_array_get(nss, 0);
        ck_assert_msg(json_is_string(json_object_get(ns0, "name")) &&
                      !strcmp(json_string_value(json_object_get(ns0, "name")), NS_NAME),
                      "namespaces[0].name is not %s", NS_NAME);
        ck_assert_int_eq(json_path_int(root, "namespaces", "0", "blocks", "namespaces[0].blocks"),
                         NITEMS);
        ck_assert_int_eq(json_path_int(root, "transfer", "bytes_in", NULL, "transfer.bytes_in"),
                         (json_int_t)NITEMS * E2E_BLOCK_BYTES);
        ck_assert_int_eq(json_path_int(root, "transfer", "bytes_out", NULL, "transfer.bytes_out"),
                         0);
        /* The owner, root here, and its usage; the loop's busy turns. */
        ck_assert_int_eq(json_path_int(root, "namespaces", "0", "owner", "namespaces[0].owner"), 0);
        ck_assert_int_eq(json_path_int(root, "tenants", "0", "namespaces", "tenants[0].namespaces"), 1);
        ck_assert_int_gt(json_path_int(root, "loop", "turns", NULL, "loop.turns"), 0);
        {
                json_t *h = json_object_get(json_object_get(root, "loop"), "turn_hist");
                json_int_t sum = 0;

                ck_assert_msg(json_is_array(h) && json_array_size(h) == 32, "loop.turn_hist: %s", out);
                for (size_t i = 0; i < 32; i++)
                        sum += json_integer_value(json_array_get(h, i));
                ck_assert_int_eq(sum, json_path_int(root, "loop", "turns", NULL, "loop.turns"));
        }
        json_decref(root);
        free(out);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_status)
{
        struct kvd_test_daemon d;
        kvc_client *c = NULL;
        char version[64];
        char *out;
        int st;

        E2E_START(&d);
        E2E_ASSERT_RC(c, kvc_connect(d.socket_path, "ctl-version", &c), 0);
        snprintf(version, sizeof(version), "%s", kvc_daemon_version(c));
        kvc_disconnect(c);
        put_blocks(&d);
        out = run_ctl(d.socket_path, "status", NULL, &st);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvdrivectl status: status 0x%x",
                      (unsigned)st);
        ck_assert_msg(version[0] && strstr(out, version),
                      "kvdrivectl status does not show the daemon version %s:\n%s", version, out);
        free(out);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_no_daemon_fails)
{
        struct kvd_test_daemon d;
        char path[160];
        char *out;
        int st;

        /* A directory without a daemon in it: the socket does not exist. */
        ck_assert_msg(kvd_test_daemon_prepare(&d) == 0, "%s", d.error);
        ck_assert_int_eq(kvd_test_daemon_path(&d, "absent.sock", path, sizeof(path)), 0);
        out = run_ctl(path, "status", NULL, &st);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) != 0,
                      "kvdrivectl status without a daemon: status 0x%x, want a failure exit",
                      (unsigned)st);
        free(out);
        ck_assert_int_eq(kvd_test_daemon_stop(&d), 0);
}
END_TEST

static Suite *kvdrivectl_suite(void)
{
        Suite *s = suite_create("e2e-kvdrivectl");
        TCase *tc = tcase_create("kvdrivectl");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_stats_json);
        tcase_add_test(tc, test_status);
        tcase_add_test(tc, test_no_daemon_fails);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(kvdrivectl_suite)
