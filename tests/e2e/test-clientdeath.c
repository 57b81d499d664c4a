/* SPDX-License-Identifier: MIT */
/*
 * Client death: a client killed (or just gone) with a big batch in flight
 * leaves the daemon serving, its session released, and everything other
 * clients had acknowledged intact.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define NS_NAME   "e2e-death-model"
#define KEEP      32u           /* blocks the keeper stores and acknowledges */
#define BIG       512u          /* slots of the dying client's pool: 4 MiB */
#define SALT_KEEP 1u
#define SALT_DIE  2u

struct death {
        const char *sock;
        struct kvc_key keep_keys[KEEP];  /* keeper block i: layer i % LAYERS */
        struct kvc_key seq;              /* the dying client's own keys */
        int ready_fd;                    /* the child writes 1 byte once in flight */
        int mode;
};

enum { KILL_IN_PUT, KILL_IN_GET_LOOP, CLOSE_MID_FLIGHT };

static uint32_t batch_size(kvc_client *c)
{
        uint32_t m = kvc_max_items(c);

        return m < 128 ? m : 128;
}

/* The keeper: stores KEEP blocks and waits for their acknowledgement. */
static void keep_blocks(struct kvd_test_daemon *d, struct death *t)
{
        struct kvc_block_ref refs[KEEP];
        uint8_t st[KEEP];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        struct kvc_key seq;
        uint32_t ns;

        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        ck_assert_int_eq(e2e_open(d->socket_path, "keeper", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, KEEP, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < KEEP; i++) {
                kvc_key_private(&seq, i, &t->keep_keys[i]);
                e2e_fill_block(kvc_pool_slot(p, i), E2E_BLOCK_BYTES, &t->keep_keys[i],
                               i % E2E_LAYERS, SALT_KEEP);
                refs[i] = (struct kvc_block_ref){ .key = t->keep_keys[i],
                                                  .layer = i % E2E_LAYERS, .slot = i };
        }
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, KEEP, st), (int)KEEP);
        kvc_pool_free(p);
        kvc_disconnect(c);
}

/* Dying client's block j: its own key (or, for j % 8 == 0, a keeper key with
 * other bytes, which must not replace the keeper's). */
static void die_ref(const struct death *t, uint32_t j, struct kvc_block_ref *ref)
{
        *ref = (struct kvc_block_ref){ .slot = j };
        if (j % 8 == 0) {
                ref->key = t->keep_keys[(j / 8) % KEEP];
                ref->layer = ((j / 8) % KEEP) % E2E_LAYERS;
        } else {
                kvc_key_private(&t->seq, j, &ref->key);
                ref->layer = j % E2E_LAYERS;
        }
}

static int dying_client(void *arg)
{
        struct death *t = arg;
        struct kvc_block_ref *refs;
        static uint8_t st[BIG];
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns, batch;
        uint64_t id;
        int rc;

        CHILD_ASSERT(e2e_open(t->sock, "doomed", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, BIG, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        batch = batch_size(c);
        refs = calloc(BIG, sizeof(*refs));
        CHILD_ASSERT(refs, "calloc");
        for (uint32_t j = 0; j < BIG; j++) {
                die_ref(t, j, &refs[j]);
                e2e_fill_block(kvc_pool_slot(p, j), E2E_BLOCK_BYTES, &refs[j].key, refs[j].layer,
                               SALT_DIE);
        }

        if (t->mode == KILL_IN_GET_LOOP) {
                /* Load the keeper's blocks over and over, always a few in
                 * flight, checking each load, until killed. */
                static uint8_t gst[8][KEEP];
                struct kvc_block_ref g[KEEP];
                uint64_t ids[8];
                uint32_t n = 0;
                bool told = false;

                for (uint32_t i = 0; i < KEEP; i++)
                        g[i] = (struct kvc_block_ref){ .key = t->keep_keys[i],
                                                       .layer = i % E2E_LAYERS };
                for (;;) {
                        uint32_t k = n % 8;

                        if (n >= 8) {
                                uint8_t *want = malloc(E2E_BLOCK_BYTES);

                                rc = kvc_wait(c, ids[k], 20000);
                                CHILD_ASSERT(rc == (int)KEEP, "get loop: %d (%s)", rc,
                                             rc < 0 ? kvc_strerror(rc) : "short");
                                for (uint32_t i = 0; i < KEEP; i++) {
                                        e2e_fill_block(want, E2E_BLOCK_BYTES, &t->keep_keys[i],
                                                       i % E2E_LAYERS, SALT_KEEP);
                                        CHILD_ASSERT(e2e_memdiff(kvc_pool_slot(p, k * KEEP + i),
                                                                 want, E2E_BLOCK_BYTES) < 0,
                                                     "keeper block %u loaded wrong", i);
                                }
                                free(want);
                        }
                        for (uint32_t i = 0; i < KEEP; i++)
                                g[i].slot = k * KEEP + i;
                        rc = kvc_get_submit(c, ns, p, g, KEEP, gst[k], &ids[k]);
                        CHILD_ASSERT(rc == 0, "get_submit: %s", kvc_strerror(rc));
                        n++;
                        if (n == 8 && !told) {
                                CHILD_ASSERT(write(t->ready_fd, "g", 1) == 1, "ready");
                                told = true;
                        }
                }
        }

        /* A big Put batch: every block in flight at once. */
        for (uint32_t j = 0; j < BIG; j += batch) {
                uint32_t n = BIG - j < batch ? BIG - j : batch;

                rc = kvc_put_submit(c, ns, p, refs + j, n, st + j, &id);
                CHILD_ASSERT(rc == 0, "put_submit at %u: %s", j, kvc_strerror(rc));
        }
        CHILD_ASSERT(write(t->ready_fd, "p", 1) == 1, "ready");
        if (t->mode == CLOSE_MID_FLIGHT) {
                /* Walk away without waiting: the library abandons the requests. */
                kvc_disconnect(c);
                kvc_pool_free(p);
                free(refs);
                return 0;
        }
        /* KILL_IN_PUT: wait for the killer. */
        for (;;)
                pause();
}

/* Whether the daemon still serves: a new client's Stats shows `clients`. */
static void assert_recovered(struct kvd_test_daemon *d, struct death *t)
{
        struct kvc_block_ref refs[KEEP];
        uint8_t st[KEEP], *want;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint32_t ns, last = 0;
        uint32_t stored = 0;
        int rc;

        ck_assert_msg(kvd_test_daemon_alive(d), "the daemon died with its client");
        ck_assert_int_eq(e2e_open(d->socket_path, "checker", NS_NAME, &c, &ns), 0);
        ck_assert_msg(e2e_wait_clients(c, 1, E2E_WAIT_MS, &last) == 0,
                      "stats clients is %u long after the client died, want 1 (this one)", last);

        /* Every acknowledged block is there, unchanged. */
        E2E_ASSERT_RC(c, kvc_pool_create(c, KEEP, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < KEEP; i++) {
                refs[i] = (struct kvc_block_ref){ .key = t->keep_keys[i],
                                                  .layer = i % E2E_LAYERS, .slot = i };
                memset(kvc_pool_slot(p, i), 0, E2E_BLOCK_BYTES);
        }
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, KEEP, st), (int)KEEP);
        want = malloc(E2E_BLOCK_BYTES);
        ck_assert_ptr_nonnull(want);
        for (uint32_t i = 0; i < KEEP; i++) {
                e2e_fill_block(want, E2E_BLOCK_BYTES, &t->keep_keys[i], i % E2E_LAYERS,
                               SALT_KEEP);
                ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, i), want, E2E_BLOCK_BYTES) < 0,
                              "acknowledged block %u changed", i);
        }

        /* The dead client's unacknowledged Puts may or may not be stored, but
         * what is served must be whole. */
        for (uint32_t j = 0; j < BIG; j += KEEP) {
                uint32_t n = 0;

                for (uint32_t k = j; k < j + KEEP && k < BIG; k++) {
                        if (k % 8 == 0)
                                continue;
                        die_ref(t, k, &refs[n]);
                        refs[n].slot = n;
                        n++;
                }
                memset(st, 0xff, sizeof(st));
                rc = kvc_get(c, ns, p, refs, n, st);
                ck_assert_msg(rc >= 0, "get of the dead client's blocks: %s", kvc_strerror(rc));
                for (uint32_t i = 0; i < n; i++) {
                        if (st[i] == KVC_ITEM_MISS)
                                continue;
                        ck_assert_uint_eq(st[i], KVC_ITEM_OK);
                        e2e_fill_block(want, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer,
                                       SALT_DIE);
                        ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, i), want, E2E_BLOCK_BYTES) < 0,
                                      "an unacknowledged block is served torn");
                        stored++;
                }
        }
        fprintf(stderr, "# %u of the dead client's blocks were stored\n", stored);

        /* New work goes through. */
        refs[0] = (struct kvc_block_ref){ .layer = 0, .slot = 0 };
        ck_assert_int_eq(kvc_key_sequence_new(&refs[0].key), 0);
        ck_assert_int_eq(e2e_random(kvc_pool_slot(p, 0), E2E_BLOCK_BYTES), 0);
        memcpy(want, kvc_pool_slot(p, 0), E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, 1, st), 1);
        refs[0].slot = 1;
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, 1, st), 1);
        ck_assert(e2e_memdiff(kvc_pool_slot(p, 1), want, E2E_BLOCK_BYTES) < 0);
        free(want);
        kvc_pool_free(p);
        kvc_disconnect(c);
}

static void run_case(int mode)
{
        struct kvd_test_daemon d;
        struct death t = { .mode = mode };
        int ready[2];
        char what, why[96];
        pid_t pid;
        int st;

        E2E_START(&d);
        t.sock = d.socket_path;
        keep_blocks(&d, &t);
        ck_assert_int_eq(kvc_key_sequence_new(&t.seq), 0);
        ck_assert_int_eq(pipe(ready), 0);
        t.ready_fd = ready[1];
        pid = e2e_fork(dying_client, &t);
        ck_assert_int_gt(pid, 0);
        close(ready[1]);
        if (read(ready[0], &what, 1) != 1) {
                e2e_wait_child(pid, 1000, why, sizeof(why));
                ck_abort_msg("the client process failed before its batch was in flight: %s", why);
        }
        close(ready[0]);

        if (mode == KILL_IN_GET_LOOP) {
                /* Mid-loop, it holds a session: 2 clients with this one. */
                kvc_client *c = NULL;
                uint32_t last = 0;

                E2E_ASSERT_RC(c, kvc_connect(d.socket_path, "watcher", &c), 0);
                ck_assert_msg(e2e_wait_clients(c, 2, E2E_WAIT_MS, &last) == 0,
                              "stats clients %u with the looping client alive, want 2", last);
                kvc_disconnect(c);
        }
        if (mode != CLOSE_MID_FLIGHT) {
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                st = e2e_wait_child(pid, E2E_CHILD_TIMEOUT_MS, why, sizeof(why));
                ck_assert_msg(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
                              "client process %s, want killed by SIGKILL", why);
        } else {
                E2E_ASSERT_CHILD_OK(pid, "client process");
        }
        assert_recovered(&d, &t);
        E2E_STOP(&d);
}

START_TEST(test_sigkill_during_put_batch)
{
        run_case(KILL_IN_PUT);
}
END_TEST

START_TEST(test_sigkill_during_get_loop)
{
        run_case(KILL_IN_GET_LOOP);
}
END_TEST

START_TEST(test_close_mid_flight)
{
        run_case(CLOSE_MID_FLIGHT);
}
END_TEST

/* Clients killed one after another, alternating a Put batch and a Get loop:
 * no session, pool or in-flight copy of theirs leaks into the next. */
START_TEST(test_sigkill_repeated)
{
        struct kvd_test_daemon d;
        struct death t = { .mode = KILL_IN_PUT };
        char why[96], what;

        E2E_START(&d);
        t.sock = d.socket_path;
        keep_blocks(&d, &t);
        for (int round = 0; round < 4; round++) {
                int ready[2], st;
                pid_t pid;

                ck_assert_int_eq(kvc_key_sequence_new(&t.seq), 0);
                ck_assert_int_eq(pipe(ready), 0);
                t.ready_fd = ready[1];
                t.mode = round % 2 ? KILL_IN_GET_LOOP : KILL_IN_PUT;
                pid = e2e_fork(dying_client, &t);
                ck_assert_int_gt(pid, 0);
                close(ready[1]);
                ck_assert_msg(read(ready[0], &what, 1) == 1, "round %d: client failed early",
                              round);
                close(ready[0]);
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                st = e2e_wait_child(pid, E2E_CHILD_TIMEOUT_MS, why, sizeof(why));
                ck_assert_msg(st >= 0 && WIFSIGNALED(st), "round %d: client %s", round, why);
        }
        assert_recovered(&d, &t);
        E2E_STOP(&d);
}
END_TEST

static Suite *clientdeath_suite(void)
{
        Suite *s = suite_create("e2e-clientdeath");
        TCase *tc = tcase_create("clientdeath");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_sigkill_during_put_batch);
        tcase_add_test(tc, test_sigkill_during_get_loop);
        tcase_add_test(tc, test_close_mid_flight);
        tcase_add_test(tc, test_sigkill_repeated);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(clientdeath_suite)
