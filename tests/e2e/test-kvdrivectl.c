/* SPDX-License-Identifier: MIT */
/*
 * kvdrivectl against a live daemon: `status` and `stats --json` report what
 * was stored; every administration command (clients, namespaces, evict,
 * drop, flush, config, top, shutdown) does what it says, with and without
 * --json, with the exit codes kvdrivectl --help documents, and refuses a
 * uid that is neither owner nor admin.
 */
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check-main.h"
#include "common.h"
#include "ssd-common.h"

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

/* Runs kvdrivectl --socket sock args... (NULL-terminated, at most 8). */
static char *run_ctlv(const char *sock, const char *const *args, int *ret_status)
{
        const char *argv[12] = { ctl_path(), "--socket", sock };
        char *out = NULL;
        int n = 3, rc;

        for (; *args && n < 11; args++)
                argv[n++] = *args;
        argv[n] = NULL;
        rc = kvd_test_run_capture(argv, CTL_TIMEOUT_MS, &out, ret_status);
        ck_assert_msg(rc == 0, "running %s: %s", argv[0], strerror(-rc));
        return out;
}

static int exit_code(int st)
{
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* kvdrivectl ... --json, asserting exit code want; the parsed output. */
#define CTL_JSON(sock, want, ...) ctl_json((sock), (want), (const char *const[]){ __VA_ARGS__, "--json", NULL })

static json_t *ctl_json(const char *sock, int want, const char *const *args)
{
        json_error_t jerr;
        json_t *j;
        char *out;
        int st;

        out = run_ctlv(sock, args, &st);
        ck_assert_msg(exit_code(st) == want, "kvdrivectl %s --json: exit %d, want %d; output:\n%s", args[0],
                      exit_code(st), want, out);
        j = json_loads(out, 0, &jerr);
        ck_assert_msg(j, "kvdrivectl %s --json is not JSON (line %d: %s): %s", args[0], jerr.line, jerr.text, out);
        free(out);
        return j;
}

/* kvdrivectl ... (text), asserting exit code want; its stdout. */
#define CTL_TEXT(sock, want, ...) ctl_text((sock), (want), (const char *const[]){ __VA_ARGS__, NULL })

static char *ctl_text(const char *sock, int want, const char *const *args)
{
        int st;
        char *out = run_ctlv(sock, args, &st);

        ck_assert_msg(exit_code(st) == want, "kvdrivectl %s: exit %d, want %d; output:\n%s", args[0],
                      exit_code(st), want, out);
        return out;
}

static json_int_t jint(json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_integer(v), "no integer '%s'", key);
        return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        ck_assert_msg(json_is_string(v), "no string '%s'", key);
        return json_string_value(v);
}

/* tiers.TIER.blocks of stats --json. */
static json_int_t tier_blocks(const char *sock, const char *tier)
{
        json_t *j = CTL_JSON(sock, 0, "stats");
        json_int_t n = jint(json_object_get(json_object_get(j, "tiers"), tier), "blocks");

        json_decref(j);
        return n;
}

/* Waits (with a deadline) until stats shows want blocks in tier. */
static void wait_tier_blocks(const char *sock, const char *tier, json_int_t want)
{
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;
        json_int_t got;

        while ((got = tier_blocks(sock, tier)) != want && e2e_now_ms() < deadline)
                usleep(20000);
        ck_assert_msg(got == want, "tier %s holds %lld blocks, want %lld", tier, (long long)got, (long long)want);
}

/* What put_blocks stored: keys and bytes, for reading them back. */
struct stored {
        struct kvc_key seq;
        uint8_t data[NITEMS][E2E_BLOCK_BYTES];
};

static void put_blocks_keep(struct kvd_test_daemon *d, struct stored *keep);

static void put_blocks(struct kvd_test_daemon *d)
{
        put_blocks_keep(d, NULL);
}

/* Every stored block is readable, with its bytes. */
static void check_readable(struct kvd_test_daemon *d, const struct stored *keep)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint32_t ns;

        ck_assert_int_eq(e2e_open(d->socket_path, "ctl-reader", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, NITEMS, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < NITEMS; i++) {
                refs[i] = (struct kvc_block_ref){ .layer = i % 2, .slot = i };
                kvc_key_private(&keep->seq, i / 2, &refs[i].key);
        }
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, NITEMS, st), (int)NITEMS);
        for (uint32_t i = 0; i < NITEMS; i++)
                ck_assert_msg(memcmp(kvc_pool_slot(p, i), keep->data[i], E2E_BLOCK_BYTES) == 0,
                              "block %u read back differs", i);
        kvc_pool_free(p);
        kvc_disconnect(c);
}

static void put_blocks_keep(struct kvd_test_daemon *d, struct stored *keep)
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
        if (keep) {
                keep->seq = seq;
                for (uint32_t i = 0; i < NITEMS; i++)
                        memcpy(keep->data[i], kvc_pool_slot(p, i), E2E_BLOCK_BYTES);
        }
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

START_TEST(test_status_json)
{
        struct kvd_test_daemon d;
        json_t *j;

        E2E_START(&d);
        j = CTL_JSON(d.socket_path, 0, "status");
        ck_assert_msg(json_is_true(json_object_get(j, "up")), "status --json: not up");
        ck_assert_int_eq(jint(j, "pid"), d.pid);
        json_decref(j);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_clients)
{
        struct kvd_test_daemon d;
        kvc_client *c = NULL;
        json_t *j, *a;
        bool seen = false;
        uint32_t ns;
        char *out;

        E2E_START(&d);
        ck_assert_int_eq(e2e_open(d.socket_path, "ctl-holder", NS_NAME, &c, &ns), 0);
        j = CTL_JSON(d.socket_path, 0, "clients");
        ck_assert_msg(json_is_true(json_object_get(j, "all")), "root sees every client");
        a = json_object_get(j, "clients");
        ck_assert_msg(json_is_array(a) && json_array_size(a) == 2, "two clients: the test's and kvdrivectl");
        for (size_t i = 0; i < json_array_size(a); i++) {
                json_t *x = json_array_get(a, i);

                if (strcmp(jstr(x, "name"), "ctl-holder") != 0)
                        continue;
                seen = true;
                ck_assert_int_eq(jint(x, "pid"), getpid());
                ck_assert_int_eq(jint(x, "uid"), getuid());
                ck_assert_int_eq(jint(x, "namespaces"), 1);
                ck_assert_int_eq(jint(x, "inflight"), 0);
                ck_assert_msg(json_is_false(json_object_get(x, "self")), "the holder is not kvdrivectl");
        }
        ck_assert_msg(seen, "clients --json does not list the test's client");
        json_decref(j);
        out = CTL_TEXT(d.socket_path, 0, "clients");
        ck_assert_msg(strstr(out, "ctl-holder") && strstr(out, "PID"), "clients:\n%s", out);
        free(out);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_namespaces)
{
        struct kvd_test_daemon d;
        json_t *j, *n;
        char *out;

        E2E_START(&d);
        put_blocks(&d);
        j = CTL_JSON(d.socket_path, 0, "namespaces");
        ck_assert_msg(json_array_size(json_object_get(j, "namespaces")) == 1, "one namespace");
        n = json_array_get(json_object_get(j, "namespaces"), 0);
        ck_assert_str_eq(jstr(n, "name"), NS_NAME);
        ck_assert_int_eq(jint(n, "blocks"), NITEMS);
        ck_assert_int_eq(jint(n, "host_blocks"), NITEMS);
        ck_assert_int_eq(jint(n, "ssd_blocks"), 0);
        ck_assert_int_eq(jint(n, "owner"), getuid());
        ck_assert_int_eq(jint(n, "block_bytes"), E2E_BLOCK_BYTES);
        ck_assert_int_eq(jint(json_object_get(n, "geometry"), "layers"), E2E_LAYERS);
        ck_assert_str_eq(jstr(n, "fingerprint"), "");
        json_decref(j);
        out = CTL_TEXT(d.socket_path, 0, "namespaces");
        ck_assert_msg(strstr(out, NS_NAME), "namespaces:\n%s", out);
        free(out);
        E2E_STOP(&d);
}
END_TEST

/* No SSD tier: dirty host copies have nowhere to go and are dropped. */
START_TEST(test_evict_without_ssd)
{
        struct kvd_test_daemon d;
        json_t *j;

        E2E_START(&d);
        put_blocks(&d);
        /* No SSD tier to evict from. */
        j = CTL_JSON(d.socket_path, 1, "evict", "--namespace", NS_NAME, "--tier", "ssd");
        ck_assert_str_eq(jstr(json_object_get(j, "error"), "code"), "unsupported");
        json_decref(j);
        j = CTL_JSON(d.socket_path, 0, "evict", "--namespace", NS_NAME, "--tier", "host");
        ck_assert_int_eq(jint(j, "dropped"), NITEMS);
        ck_assert_int_eq(jint(j, "freed"), 0);
        ck_assert_int_eq(jint(j, "demoting"), 0);
        json_decref(j);
        ck_assert_int_eq(tier_blocks(d.socket_path, "host"), 0);
        /* Its last block gone and nobody joined: the namespace went too. */
        j = CTL_JSON(d.socket_path, 1, "evict", "--namespace", "no-such-ns");
        ck_assert_str_eq(jstr(json_object_get(j, "error"), "code"), "not_found");
        json_decref(j);
        free(CTL_TEXT(d.socket_path, 2, "evict"));
        free(CTL_TEXT(d.socket_path, 2, "evict", "--namespace", NS_NAME, "--tier", "gpu"));
        E2E_STOP(&d);
}
END_TEST

/* With an SSD tier, dirty copies are demoted: none left in host, all readable. */
START_TEST(test_evict_demotes)
{
        static struct stored keep;
        struct kvd_test_daemon d;
        struct ssd_dir sd;
        json_t *j;
        char *out;

        ssd_dir_make(&sd);
        E2E_START(&d, "--ssd-dir", sd.path, "--ssd-bytes", "64M",);
        put_blocks_keep(&d, &keep);
        out = CTL_TEXT(d.socket_path, 0, "evict", "--namespace", NS_NAME);
        ck_assert_msg(strstr(out, "demoted"), "evict:\n%s", out);
        free(out);
        wait_tier_blocks(d.socket_path, "host", 0);
        wait_tier_blocks(d.socket_path, "ssd", NITEMS);
        j = CTL_JSON(d.socket_path, 0, "namespaces");
        ck_assert_int_eq(jint(json_array_get(json_object_get(j, "namespaces"), 0), "host_blocks"), 0);
        ck_assert_int_eq(jint(json_array_get(json_object_get(j, "namespaces"), 0), "blocks"), NITEMS);
        json_decref(j);
        check_readable(&d, &keep);
        E2E_STOP(&d);
        ssd_dir_remove(&sd);
}
END_TEST

/* flush makes host-only blocks SSD-resident; then evicting host frees clean copies. */
START_TEST(test_flush)
{
        static struct stored keep;
        struct kvd_test_daemon d;
        struct ssd_dir sd;
        json_t *j;
        char *out;

        ssd_dir_make(&sd);
        E2E_START(&d, "--ssd-dir", sd.path, "--ssd-bytes", "64M",);
        put_blocks_keep(&d, &keep);
        ck_assert_int_eq(tier_blocks(d.socket_path, "ssd"), 0);
        j = CTL_JSON(d.socket_path, 0, "flush");
        ck_assert_int_eq(jint(j, "started"), NITEMS);
        ck_assert_msg(json_is_true(json_object_get(j, "have_ssd")), "flush: have_ssd");
        json_decref(j);
        wait_tier_blocks(d.socket_path, "ssd", NITEMS);
        ck_assert_int_eq(tier_blocks(d.socket_path, "host"), NITEMS);
        out = CTL_TEXT(d.socket_path, 0, "flush");
        ck_assert_msg(strstr(out, "0 host-only blocks"), "a second flush has nothing to write:\n%s", out);
        free(out);
        j = CTL_JSON(d.socket_path, 0, "evict", "--namespace", NS_NAME, "--tier", "host");
        ck_assert_int_eq(jint(j, "freed"), NITEMS);
        ck_assert_int_eq(jint(j, "dropped"), 0);
        json_decref(j);
        ck_assert_int_eq(tier_blocks(d.socket_path, "host"), 0);
        check_readable(&d, &keep);
        /* Evicting from SSD now: the blocks are back in host (read), their SSD copies go. */
        j = CTL_JSON(d.socket_path, 0, "evict", "--namespace", NS_NAME, "--tier", "ssd");
        ck_assert_int_eq(jint(j, "freed") + jint(j, "dropped") + jint(j, "busy"), NITEMS);
        json_decref(j);
        E2E_STOP(&d);
        ssd_dir_remove(&sd);
}
END_TEST

START_TEST(test_drop)
{
        struct kvd_test_daemon d;
        json_t *j;

        E2E_START(&d);
        put_blocks(&d);
        j = CTL_JSON(d.socket_path, 0, "drop", NS_NAME);
        ck_assert_int_eq(jint(j, "deleted"), NITEMS);
        json_decref(j);
        j = CTL_JSON(d.socket_path, 1, "drop-namespace", NS_NAME);
        ck_assert_str_eq(jstr(json_object_get(j, "error"), "code"), "not_found");
        json_decref(j);
        free(CTL_TEXT(d.socket_path, 2, "drop"));
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_config)
{
        struct kvd_test_daemon d;
        json_t *j, *o;
        char *out;

        E2E_START(&d, "--workers", "3",);
        j = CTL_JSON(d.socket_path, 0, "config");
        o = json_object_get(j, "options");
        ck_assert_str_eq(jstr(json_object_get(o, "host-bytes"), "source"), "command line");
        ck_assert_str_eq(jstr(json_object_get(o, "host-bytes"), "value"), "67108864");
        ck_assert_str_eq(jstr(json_object_get(o, "workers"), "value"), "3");
        ck_assert_str_eq(jstr(json_object_get(o, "eviction"), "source"), "default");
        ck_assert_str_eq(jstr(json_object_get(o, "eviction"), "value"), "heat");
        ck_assert_str_eq(jstr(json_object_get(o, "quota-host-bytes"), "value"), "0");
        json_decref(j);
        out = CTL_TEXT(d.socket_path, 0, "config");
        ck_assert_msg(strstr(out, "host-bytes") && strstr(out, "command line"), "config:\n%s", out);
        free(out);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_config_file_source)
{
        struct kvd_test_daemon d;
        char conf[160];
        json_t *j, *o;

        snprintf(conf, sizeof(conf), "/tmp/kvd-ctl-%d.conf", (int)getpid());
        ck_assert_int_eq(e2e_write_file(conf, "[kvdrived]\nmax-items = 512\n", 27), 0);
        E2E_START(&d, "--config", conf,);
        j = CTL_JSON(d.socket_path, 0, "config");
        o = json_object_get(j, "options");
        ck_assert_str_eq(jstr(json_object_get(o, "max-items"), "source"), "file");
        ck_assert_str_eq(jstr(json_object_get(o, "max-items"), "value"), "512");
        ck_assert_str_eq(jstr(j, "config_file"), conf);
        json_decref(j);
        unlink(conf);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_top)
{
        struct kvd_test_daemon d;
        json_error_t jerr;
        char *out, *line, *save = NULL;
        unsigned lines = 0;
        int st;

        E2E_START(&d);
        out = run_ctlv(d.socket_path, (const char *const[]){ "top", "--count", "2", "--json", NULL }, &st);
        ck_assert_int_eq(exit_code(st), 0);
        for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                json_t *j = json_loads(line, 0, &jerr);

                ck_assert_msg(j, "top --json line %u is not JSON: %s", lines, line);
                ck_assert_int_eq(jint(j, "sample"), ++lines);
                ck_assert_msg(json_is_object(json_object_get(json_object_get(j, "tiers"), "host")), "tiers.host");
                ck_assert_msg(json_is_number(json_object_get(json_object_get(j, "client"), "bytes_in_per_s")),
                              "client.bytes_in_per_s");
                json_decref(j);
        }
        ck_assert_uint_eq(lines, 2);
        free(out);
        out = CTL_TEXT(d.socket_path, 0, "top", "--count", "1");
        ck_assert_msg(strstr(out, "TIER") && strstr(out, "host"), "top:\n%s", out);
        free(out);
        free(CTL_TEXT(d.socket_path, 2, "top", "--count", "0"));
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_shutdown)
{
        struct kvd_test_daemon d;
        json_t *j;
        int st;

        E2E_START(&d);
        j = CTL_JSON(d.socket_path, 0, "shutdown");
        ck_assert_int_eq(jint(j, "pid"), d.pid);
        json_decref(j);
        ck_assert_int_eq(kvd_test_daemon_wait_exit(&d, E2E_WAIT_MS, &st), 0);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvdrived after shutdown: status 0x%x", (unsigned)st);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_usage)
{
        struct kvd_test_daemon d;

        E2E_START(&d);
        free(CTL_TEXT(d.socket_path, 2, "no-such-command"));
        free(CTL_TEXT(d.socket_path, 2, "clients", "extra"));
        free(CTL_TEXT(d.socket_path, 2, "flush", "--tier", "ssd"));
        free(CTL_TEXT(d.socket_path, 0, "--help"));
        E2E_STOP(&d);
}
END_TEST

/* A uid that is neither owner nor admin (nobody). */
#define STRANGER 65534

struct denied_arg {
        const char *sock;
        const char *ctl;        /* a copy of kvdrivectl the stranger may run */
};

/* Copies src to dst with the given mode. */
static void copy_file(const char *src, const char *dst, mode_t mode)
{
        char buf[65536];
        int in = open(src, O_RDONLY | O_CLOEXEC), out;
        ssize_t n;

        ck_assert_msg(in >= 0, "open %s: %m", src);
        out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
        ck_assert_msg(out >= 0, "create %s: %m", dst);
        while ((n = read(in, buf, sizeof(buf))) > 0)
                ck_assert_int_eq(write(out, buf, (size_t)n), n);
        ck_assert_int_eq(n, 0);
        ck_assert_int_eq(fchmod(out, mode), 0);
        close(in);
        close(out);
}

/* The build tree may sit below a directory only root can enter (a checkout
 * under `mktemp -d`): the stranger runs a copy of kvdrivectl and its
 * library laid out as in the build (its runpath is $ORIGIN/../libkvclient)
 * in dir, which it can reach. Returns the copy's path (free it). */
static char *stranger_ctl(const char *dir)
{
        const char *ctl = ctl_path();
        const char *slash = strrchr(ctl, '/');
        char *root, *tools, *lib, *dst, *lib_src, *lib_dst;

        ck_assert_ptr_nonnull(slash);
        ck_assert_int_ge(asprintf(&root, "%s/ctl", dir), 0);
        ck_assert_int_ge(asprintf(&tools, "%s/tools", root), 0);
        ck_assert_int_ge(asprintf(&lib, "%s/libkvclient", root), 0);
        ck_assert_int_ge(asprintf(&dst, "%s/kvdrivectl", tools), 0);
        ck_assert_int_ge(asprintf(&lib_src, "%.*s/../libkvclient/libkvclient.so.0", (int)(slash - ctl), ctl), 0);
        ck_assert_int_ge(asprintf(&lib_dst, "%s/libkvclient.so.0", lib), 0);
        ck_assert_int_eq(mkdir(root, 0755), 0);
        ck_assert_int_eq(mkdir(tools, 0755), 0);
        ck_assert_int_eq(mkdir(lib, 0755), 0);
        copy_file(ctl, dst, 0755);
        copy_file(lib_src, lib_dst, 0644);
        free(root);
        free(tools);
        free(lib);
        free(lib_src);
        free(lib_dst);
        return dst;
}

/* In the child (as STRANGER): the admin commands are refused, exit 1 with
 * error.code "denied"; it sees only its own clients. */
static int stranger(void *arg)
{
        const struct denied_arg *a = arg;
        static const char *const cmds[][5] = {
                { "flush", "--json", NULL },
                { "config", "--json", NULL },
                { "shutdown", "--json", NULL },
                { "evict", "--namespace", NS_NAME, "--json", NULL },
        };

        for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
                const char *argv[9] = { a->ctl, "--socket", a->sock };
                json_error_t jerr;
                char *out = NULL;
                json_t *j, *e;
                int st, n = 3;

                for (const char *const *c = cmds[i]; *c; c++)
                        argv[n++] = *c;
                argv[n] = NULL;
                CHILD_ASSERT(kvd_test_run_capture(argv, CTL_TIMEOUT_MS, &out, &st) == 0, "run %s", cmds[i][0]);
                CHILD_ASSERT(exit_code(st) == 1, "%s as uid %d: exit %d, want 1", cmds[i][0], STRANGER,
                             exit_code(st));
                j = json_loads(out, 0, &jerr);
                e = json_object_get(j, "error");
                /* evict finds no namespace it may see: not found, not denied. */
                CHILD_ASSERT(e && json_is_string(json_object_get(e, "code")), "%s: %s", cmds[i][0], out);
                CHILD_ASSERT(!strcmp(json_string_value(json_object_get(e, "code")),
                                     strcmp(cmds[i][0], "evict") ? "denied" : "not_found"),
                             "%s: %s", cmds[i][0], out);
                json_decref(j);
                free(out);
        }
        {
                const char *argv[] = { a->ctl, "--socket", a->sock, "clients", "--json", NULL };
                char *out = NULL;
                json_t *j, *cl;
                int st;

                CHILD_ASSERT(kvd_test_run_capture(argv, CTL_TIMEOUT_MS, &out, &st) == 0, "run clients");
                CHILD_ASSERT(exit_code(st) == 0, "clients as a stranger: exit %d", exit_code(st));
                j = json_loads(out, 0, NULL);
                cl = json_object_get(j, "clients");
                CHILD_ASSERT(json_is_false(json_object_get(j, "all")), "a stranger does not see all: %s", out);
                CHILD_ASSERT(json_array_size(cl) == 1, "a stranger sees only its own client: %s", out);
                json_decref(j);
                free(out);
        }
        return 0;
}

START_TEST(test_denied)
{
        struct kvd_test_daemon d;
        struct denied_arg a;
        kvc_client *c = NULL;
        uint32_t ns;
        pid_t pid;

        if (getuid() != 0) {
                fprintf(stderr, "test_denied: not root, skipped\n");
                return;
        }
        E2E_START(&d, "--socket-mode", "0666",);
        ck_assert_int_eq(chmod(d.dir, 0711), 0);
        /* Root's client and namespace: the stranger must not see the client. */
        ck_assert_int_eq(e2e_open(d.socket_path, "ctl-root", NS_NAME, &c, &ns), 0);
        a.sock = d.socket_path;
        a.ctl = stranger_ctl(d.dir);
        pid = e2e_fork_as(STRANGER, STRANGER, NULL, 0, stranger, &a);
        ck_assert_int_gt(pid, 0);
        E2E_ASSERT_CHILD_OK(pid, "kvdrivectl as a stranger");
        /* Still running: its shutdown was refused. */
        ck_assert_msg(kvd_test_daemon_alive(&d), "the daemon stopped on a stranger's shutdown");
        free((char *)a.ctl);
        kvc_disconnect(c);
        E2E_STOP(&d);
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
        tcase_add_test(tc, test_status_json);
        tcase_add_test(tc, test_clients);
        tcase_add_test(tc, test_namespaces);
        tcase_add_test(tc, test_evict_without_ssd);
        tcase_add_test(tc, test_evict_demotes);
        tcase_add_test(tc, test_flush);
        tcase_add_test(tc, test_drop);
        tcase_add_test(tc, test_config);
        tcase_add_test(tc, test_config_file_source);
        tcase_add_test(tc, test_top);
        tcase_add_test(tc, test_shutdown);
        tcase_add_test(tc, test_usage);
        tcase_add_test(tc, test_denied);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(kvdrivectl_suite)
