/* SPDX-License-Identifier: MIT */
/*
 * Per-layer completion counters: one Get of several layers, each layer's
 * items counted on its own shared counter, waited on with no message per
 * layer; misses count as failed; bad input is refused before anything moves;
 * a re-registered page replaces the old one; another process sleeping on a
 * counter is woken; a client killed with counted Gets in flight leaves the
 * daemon serving.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

#include "check-main.h"
#include "common.h"

#define NS_NAME "e2e-counters-model"
#define NB      8u                      /* blocks per layer */
#define NL      3u                      /* layers a Get covers */
#define NITEMS  (NB * NL)
#define GET0    NITEMS                  /* first slot Gets load into */
#define SLOTS   (2 * NITEMS)
#define SALT    7u

#define E(code) KVDRIVE__ERROR_CODE__E_##code

struct fix {
        struct kvd_test_daemon d;
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        struct kvc_key keys[NB];
};

/* Item i of a Get: block i % NB at layer i / NB (layer-major, as a
 * pipelined decoder asks), into slot at + i, counted on counter (layer + 1)
 * when counted. */
static struct kvc_block_ref item(const struct fix *f, uint32_t i, uint32_t at, bool counted)
{
        uint32_t l = i / NB;

        return (struct kvc_block_ref){ .key = f->keys[i % NB], .layer = l, .slot = at + i,
                                       .counter = counted ? l + 1 : 0 };
}

/* Starts a daemon, opens a client and stores NB blocks at each of NL
 * layers (uncounted). */
static void fix_open(struct fix *f)
{
        struct kvc_block_ref refs[NITEMS];
        struct kvc_key seq;

        memset(f, 0, sizeof(*f));
        E2E_START(&f->d);
        ck_assert_int_eq(e2e_open(f->d.socket_path, "counters", NS_NAME, &f->c, &f->ns), 0);
        E2E_ASSERT_RC(f->c, kvc_pool_create(f->c, SLOTS, E2E_BLOCK_BYTES, &f->p), 0);
        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        for (uint32_t b = 0; b < NB; b++)
                kvc_key_private(&seq, b, &f->keys[b]);
        for (uint32_t i = 0; i < NITEMS; i++) {
                refs[i] = item(f, i, 0, false);
                e2e_fill_block(kvc_pool_slot(f->p, i), E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, SALT);
        }
        E2E_ASSERT_RC(f->c, kvc_put(f->c, f->ns, f->p, refs, NITEMS, NULL), (int)NITEMS);
}

static void fix_close(struct fix *f)
{
        kvc_pool_free(f->p);
        kvc_disconnect(f->c);
        E2E_STOP(&f->d);
}

/* Whether layer l's slots of a Get at `at` hold the stored bytes. */
static bool layer_ok(const struct fix *f, uint32_t l, uint32_t at)
{
        uint8_t *want = malloc(E2E_BLOCK_BYTES);
        bool ok = want != NULL;

        for (uint32_t b = 0; ok && b < NB; b++) {
                e2e_fill_block(want, E2E_BLOCK_BYTES, &f->keys[b], l, SALT);
                ok = e2e_memdiff(kvc_pool_slot(f->p, at + l * NB + b), want, E2E_BLOCK_BYTES) < 0;
        }
        free(want);
        return ok;
}

static void clear_get_slots(struct fix *f)
{
        for (uint32_t i = 0; i < NITEMS; i++)
                memset(kvc_pool_slot(f->p, GET0 + i), 0, E2E_BLOCK_BYTES);
}

static void assert_counters(const kvc_counters *k, uint32_t n, uint32_t done, uint32_t failed)
{
        for (uint32_t i = 0; i < n; i++) {
                ck_assert_msg(kvc_counter_done(k, i) == done, "counter %u: done %u, want %u", i,
                              kvc_counter_done(k, i), done);
                ck_assert_msg(kvc_counter_failed(k, i) == failed, "counter %u: failed %u, want %u", i,
                              kvc_counter_failed(k, i), failed);
        }
}

/* (a) One Get of 3 layers: each layer's counter reaches its item count, the
 * bytes are there when it does, and the one reply still comes. */
START_TEST(test_get_layers)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        kvc_counters *k = NULL;
        struct fix f;
        uint64_t id;

        fix_open(&f);
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, NL, &k), 0);
        assert_counters(k, NL, 0, 0);
        ck_assert_int_eq(kvc_counter_wait(k, 0, 1, 0), -ETIMEDOUT);
        ck_assert_int_eq(kvc_counter_wait(k, 0, 1, 20), -ETIMEDOUT);
        ck_assert_int_eq(kvc_counter_wait(k, 0, 0, 0), 0);
        ck_assert_int_eq(kvc_counter_wait(k, NL, 0, 0), -EINVAL);
        ck_assert_int_eq(kvc_counter_wait(NULL, 0, 0, 0), -EINVAL);
        ck_assert_uint_eq(kvc_counter_done(k, NL), 0);

        for (int round = 1; round <= 3; round++) {
                clear_get_slots(&f);
                for (uint32_t i = 0; i < NITEMS; i++)
                        refs[i] = item(&f, i, GET0, true);
                memset(st, 0xff, sizeof(st));
                E2E_ASSERT_RC(f.c, kvc_get_submit(f.c, f.ns, f.p, refs, NITEMS, st, &id), 0);
                for (uint32_t l = 0; l < NL; l++) {
                        ck_assert_int_eq(kvc_counter_wait(k, l, round * NB, 10000), 0);
                        ck_assert_msg(layer_ok(&f, l, GET0), "round %d: layer %u counted before its bytes",
                                      round, l);
                }
                E2E_ASSERT_RC(f.c, kvc_wait(f.c, id, 10000), (int)NITEMS);
                for (uint32_t i = 0; i < NITEMS; i++)
                        ck_assert_uint_eq(st[i], KVC_ITEM_OK);
                /* Exactly once each. */
                assert_counters(k, NL, round * NB, 0);
        }

        /* Put items count too: stored, then EXISTS (not failed). */
        {
                struct kvc_key seq, nk;

                ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
                kvc_key_private(&seq, 0, &nk);
                refs[0] = (struct kvc_block_ref){ .key = nk, .layer = 0, .slot = 0, .counter = 2 };
                E2E_ASSERT_RC(f.c, kvc_put(f.c, f.ns, f.p, refs, 1, st), 1);
                ck_assert_uint_eq(kvc_counter_done(k, 1), 3 * NB + 1);
                E2E_ASSERT_RC(f.c, kvc_put(f.c, f.ns, f.p, refs, 1, st), 0);
                ck_assert_uint_eq(st[0], KVC_ITEM_EXISTS);
                ck_assert_uint_eq(kvc_counter_done(k, 1), 3 * NB + 2);
                ck_assert_uint_eq(kvc_counter_failed(k, 1), 0);
        }
        kvc_counters_free(k);
        fix_close(&f);
}
END_TEST

/* (b) A missing key counts on done and on failed. */
START_TEST(test_miss_counts_failed)
{
        struct kvc_block_ref refs[3];
        uint8_t st[3];
        kvc_counters *k = NULL;
        struct kvc_key seq;
        struct fix f;

        fix_open(&f);
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, 2, &k), 0);
        refs[0] = item(&f, 0, GET0, true);
        refs[1] = item(&f, 1, GET0, true);
        refs[2] = (struct kvc_block_ref){ .layer = 0, .slot = GET0 + 2, .counter = 1 };
        ck_assert_int_eq(kvc_key_sequence_new(&seq), 0);
        kvc_key_private(&seq, 99, &refs[2].key);
        memset(kvc_pool_slot(f.p, GET0 + 2), 0x5a, E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, 3, st), 2);
        ck_assert_uint_eq(st[0], KVC_ITEM_OK);
        ck_assert_uint_eq(st[1], KVC_ITEM_OK);
        ck_assert_uint_eq(st[2], KVC_ITEM_MISS);
        ck_assert_int_eq(kvc_counter_wait(k, 0, 3, 0), 0);
        ck_assert_uint_eq(kvc_counter_done(k, 0), 3);
        ck_assert_uint_eq(kvc_counter_failed(k, 0), 1);
        ck_assert_uint_eq(kvc_counter_done(k, 1), 0);
        ck_assert(e2e_all_bytes(kvc_pool_slot(f.p, GET0 + 2), E2E_BLOCK_BYTES, 0x5a));
        kvc_counters_free(k);
        fix_close(&f);
}
END_TEST

/* ---- (c) bad input ---- */

static int raw_register(int fd, uint64_t id, uint32_t count, int pass_fd, char *msg, size_t size)
{
        Kvdrive__RegisterCounters rc = KVDRIVE__REGISTER_COUNTERS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        int code;

        rc.count = count;
        req.id = id;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_COUNTERS;
        req.register_counters = &rc;
        ck_assert_int_eq(kvd_test_raw_call(fd, &req, pass_fd, &r), 0);
        ck_assert_uint_eq(r->id, id);
        code = kvd_test_error_code(r);
        if (code < 0) {
                ck_assert_int_eq(r->body_case, KVDRIVE__RESPONSE__BODY_REGISTER_COUNTERS);
                ck_assert_uint_eq(r->register_counters->count, count);
                code = 0;
        }
        snprintf(msg, size, "%s", code > 0 && r->error->message ? r->error->message : "");
        kvdrive__response__free_unpacked(r, NULL);
        return code;
}

/* Every malformed RegisterCounters is refused with E_BAD_ARG and a clear
 * message; the connection then registers a good page. */
START_TEST(test_register_bad_pages)
{
        struct kvd_test_daemon d;
        char msg[256];
        int fd, mfd;

        E2E_START(&d);
        fd = kvd_test_raw_connect(d.socket_path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(kvd_test_raw_hello(fd, 1, NULL, NULL), 0);

        mfd = kvd_test_memfd(65536, true);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(raw_register(fd, 2, 0, mfd, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "count"), "count 0: '%s'", msg);
        ck_assert_int_eq(raw_register(fd, 3, 4097, mfd, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "1-4096"), "count 4097: '%s'", msg);
        ck_assert_int_eq(raw_register(fd, 4, 4, -1, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "exactly one memfd"), "no fd: '%s'", msg);
        close(mfd);

        /* Not a memfd. */
        mfd = open("/dev/null", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(raw_register(fd, 5, 4, mfd, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "sealed"), "/dev/null: '%s'", msg);
        close(mfd);
        /* A memfd without F_SEAL_SHRINK. */
        mfd = kvd_test_memfd(4096, false);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(raw_register(fd, 6, 4, mfd, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "F_SEAL_SHRINK"), "unsealed: '%s'", msg);
        close(mfd);
        /* Sealed but smaller than 2 * count words. */
        mfd = kvd_test_memfd(4096, true);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(raw_register(fd, 7, 1024, mfd, msg, sizeof(msg)), E(BAD_ARG));
        ck_assert_msg(strstr(msg, "smaller"), "too small: '%s'", msg);
        /* The same memfd is big enough for 512 counters: the session works. */
        ck_assert_int_eq(raw_register(fd, 8, 512, mfd, msg, sizeof(msg)), 0);
        close(mfd);
        close(fd);
        E2E_STOP(&d);
}
END_TEST

/* A Get naming a counter with no page, or beyond the page, is refused as a
 * whole: no slot written, no counter moved; the next good Get works. */
START_TEST(test_bad_counter_refused)
{
        struct kvc_block_ref refs[NITEMS];
        uint8_t st[NITEMS];
        kvc_counters *k = NULL;
        struct fix f;

        fix_open(&f);
        ck_assert_int_eq(kvc_counters_create(f.c, 0, &k), -EINVAL);
        ck_assert_int_eq(kvc_counters_create(f.c, KVC_COUNTERS_MAX + 1, &k), -EINVAL);
        ck_assert_ptr_null(k);

        for (uint32_t i = 0; i < NITEMS; i++)
                refs[i] = item(&f, i, GET0, i == NITEMS - 1);
        memset(kvc_pool_slot(f.p, GET0), 0x11, E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NITEMS, st), -KVC_E_BAD_ARG);
        ck_assert_msg(strstr(kvc_last_error(f.c), "no counter page"), "'%s'", kvc_last_error(f.c));
        ck_assert(e2e_all_bytes(kvc_pool_slot(f.p, GET0), E2E_BLOCK_BYTES, 0x11));

        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, 2, &k), 0);
        /* The last item's layer is 2: counter 3 of a page of 2. */
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NITEMS, st), -KVC_E_OUT_OF_RANGE);
        ck_assert_msg(strstr(kvc_last_error(f.c), "counter 3 of 2"), "'%s'", kvc_last_error(f.c));
        ck_assert(e2e_all_bytes(kvc_pool_slot(f.p, GET0), E2E_BLOCK_BYTES, 0x11));
        assert_counters(k, 2, 0, 0);
        refs[0].counter = UINT32_MAX;
        refs[NITEMS - 1].counter = 0;
        E2E_ASSERT_RC(f.c, kvc_put(f.c, f.ns, f.p, refs, NITEMS, st), -KVC_E_OUT_OF_RANGE);
        assert_counters(k, 2, 0, 0);

        /* The session keeps working. */
        for (uint32_t i = 0; i < 2 * NB; i++)
                refs[i] = item(&f, i, GET0, true);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, 2 * NB, st), (int)(2 * NB));
        assert_counters(k, 2, NB, 0);
        ck_assert(layer_ok(&f, 0, GET0) && layer_ok(&f, 1, GET0));
        kvc_counters_free(k);
        fix_close(&f);
}
END_TEST

/* (d) Registering again replaces the page: the old one stops moving. */
START_TEST(test_reregister_replaces)
{
        struct kvc_block_ref refs[NB];
        kvc_counters *k1 = NULL, *k2 = NULL;
        struct fix f;

        fix_open(&f);
        for (uint32_t i = 0; i < NB; i++)
                refs[i] = item(&f, i, GET0, true);
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, 1, &k1), 0);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NB, NULL), (int)NB);
        assert_counters(k1, 1, NB, 0);
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, 4, &k2), 0);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NB, NULL), (int)NB);
        assert_counters(k1, 1, NB, 0);
        ck_assert_uint_eq(kvc_counter_done(k2, 0), NB);
        /* The client may free the old page; the daemon keeps no use of it. */
        k1 = kvc_counters_free(k1);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NB, NULL), (int)NB);
        ck_assert_uint_eq(kvc_counter_done(k2, 0), 2 * NB);
        kvc_counters_free(k2);
        fix_close(&f);
}
END_TEST

/* ---- (e) a waiter in another process ---- */

struct waiter {
        const kvc_counters *k;
        int ready_fd;
};

static int waiter_main(void *arg)
{
        struct waiter *w = arg;
        struct timespec a, b;
        long ms;
        int rc;

        CHILD_ASSERT(kvc_counter_done(w->k, 1) == 0, "counter moved early");
        CHILD_ASSERT(write(w->ready_fd, "w", 1) == 1, "ready");
        clock_gettime(CLOCK_MONOTONIC, &a);
        rc = kvc_counter_wait(w->k, 1, NB, 20000);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ms = (long)(b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
        CHILD_ASSERT(rc == 0, "kvc_counter_wait: %d (%s) after %ld ms", rc, kvc_strerror(rc), ms);
        /* Woken, not merely finding the count at its timeout. */
        CHILD_ASSERT(ms < 5000, "kvc_counter_wait returned only after %ld ms: no wake", ms);
        CHILD_ASSERT(kvc_counter_done(w->k, 1) == NB, "woken at %u, want %u", kvc_counter_done(w->k, 1), NB);
        CHILD_ASSERT(kvc_counter_failed(w->k, 1) == 0, "failed %u", kvc_counter_failed(w->k, 1));
        return 0;
}

/*
 * Waits until process pid sleeps in futex(2) (the system call it is blocked
 * in is the first field of /proc/PID/syscall). Where that file cannot be
 * read (a kernel without it), waits 300 ms instead: the wake is then
 * likely, not certain, to find the waiter asleep.
 */
static void wait_in_futex(pid_t pid)
{
        struct timespec nap = { 0, 1000 * 1000 };
        int64_t deadline = e2e_now_ms() + E2E_WAIT_MS;
        char path[64], buf[64];
        long nr = -1;

        snprintf(path, sizeof(path), "/proc/%d/syscall", (int)pid);
        for (;;) {
                FILE *f = fopen(path, "re");

                if (!f) {
                        struct timespec fallback = { 0, 300 * 1000 * 1000 };

                        fprintf(stderr, "# %s: %s; waiting 300 ms instead\n", path, strerror(errno));
                        nanosleep(&fallback, NULL);
                        return;
                }
                if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%ld", &nr) == 1 && nr == SYS_futex) {
                        fclose(f);
                        return;
                }
                fclose(f);
                ck_assert_msg(e2e_now_ms() < deadline, "the waiting process never slept in futex(2): %s", buf);
                nanosleep(&nap, NULL);
        }
}

START_TEST(test_other_process_woken)
{
        struct kvc_block_ref refs[NITEMS];
        kvc_counters *k = NULL;
        struct waiter w;
        struct fix f;
        int ready[2];
        char c;
        pid_t pid;

        fix_open(&f);
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, NL, &k), 0);
        ck_assert_int_eq(pipe(ready), 0);
        w = (struct waiter){ .k = k, .ready_fd = ready[1] };
        pid = e2e_fork(waiter_main, &w);
        ck_assert_int_gt(pid, 0);
        close(ready[1]);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        close(ready[0]);
        /* Wake it only once it is past its spin, asleep in the futex. */
        wait_in_futex(pid);
        for (uint32_t i = 0; i < NITEMS; i++)
                refs[i] = item(&f, i, GET0, true);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NITEMS, NULL), (int)NITEMS);
        E2E_ASSERT_CHILD_OK(pid, "waiting process");
        kvc_counters_free(k);
        fix_close(&f);
}
END_TEST

/* ---- (f) client killed with counted Gets in flight ---- */

struct doomed {
        const char *sock;
        struct kvc_key keys[NB];
        int ready_fd;
};

static int doomed_main(void *arg)
{
        struct doomed *t = arg;
        static uint8_t st[8][NITEMS];
        struct kvc_block_ref refs[NITEMS];
        kvc_counters *k;
        uint64_t ids[8];
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(e2e_open(t->sock, "doomed", NS_NAME, &c, &ns) == 0, "open");
        rc = kvc_pool_create(c, 8 * NITEMS, E2E_BLOCK_BYTES, &p);
        CHILD_ASSERT(rc == 0, "kvc_pool_create: %s", kvc_strerror(rc));
        rc = kvc_counters_create(c, NL, &k);
        CHILD_ASSERT(rc == 0, "kvc_counters_create: %s", kvc_strerror(rc));
        for (uint32_t n = 0;; n++) {
                uint32_t q = n % 8;

                if (n >= 8) {
                        rc = kvc_wait(c, ids[q], 20000);
                        CHILD_ASSERT(rc == (int)NITEMS, "get loop: %d (%s)", rc,
                                     rc < 0 ? kvc_strerror(rc) : "short");
                }
                for (uint32_t i = 0; i < NITEMS; i++)
                        refs[i] = (struct kvc_block_ref){ .key = t->keys[i % NB], .layer = i / NB,
                                                          .slot = q * NITEMS + i, .counter = i / NB + 1 };
                rc = kvc_get_submit(c, ns, p, refs, NITEMS, st[q], &ids[q]);
                CHILD_ASSERT(rc == 0, "get_submit: %s", kvc_strerror(rc));
                if (n == 7)
                        CHILD_ASSERT(write(t->ready_fd, "g", 1) == 1, "ready");
        }
}

START_TEST(test_sigkill_with_counted_gets)
{
        struct kvc_block_ref refs[NITEMS];
        struct doomed t;
        kvc_counters *k = NULL;
        struct fix f;
        char why[96], c;
        int ready[2], st;
        uint32_t last = 0;
        pid_t pid;

        fix_open(&f);
        t.sock = f.d.socket_path;
        memcpy(t.keys, f.keys, sizeof(t.keys));
        for (int round = 0; round < 3; round++) {
                ck_assert_int_eq(pipe(ready), 0);
                t.ready_fd = ready[1];
                pid = e2e_fork(doomed_main, &t);
                ck_assert_int_gt(pid, 0);
                close(ready[1]);
                if (read(ready[0], &c, 1) != 1) {
                        e2e_wait_child(pid, 1000, why, sizeof(why));
                        ck_abort_msg("round %d: the client failed before its Gets were in flight: %s", round,
                                     why);
                }
                close(ready[0]);
                ck_assert_int_eq(kill(pid, SIGKILL), 0);
                st = e2e_wait_child(pid, E2E_CHILD_TIMEOUT_MS, why, sizeof(why));
                ck_assert_msg(st >= 0 && WIFSIGNALED(st), "round %d: client %s", round, why);
        }
        ck_assert_msg(kvd_test_daemon_alive(&f.d), "the daemon died with its client");
        ck_assert_msg(e2e_wait_clients(f.c, 1, E2E_WAIT_MS, &last) == 0,
                      "stats clients %u long after the clients died, want 1", last);

        /* The surviving client counts as before. */
        E2E_ASSERT_RC(f.c, kvc_counters_create(f.c, NL, &k), 0);
        clear_get_slots(&f);
        for (uint32_t i = 0; i < NITEMS; i++)
                refs[i] = item(&f, i, GET0, true);
        E2E_ASSERT_RC(f.c, kvc_get(f.c, f.ns, f.p, refs, NITEMS, NULL), (int)NITEMS);
        assert_counters(k, NL, NB, 0);
        for (uint32_t l = 0; l < NL; l++)
                ck_assert(layer_ok(&f, l, GET0));
        kvc_counters_free(k);
        fix_close(&f);
}
END_TEST

static Suite *counters_suite(void)
{
        Suite *s = suite_create("e2e-counters");
        TCase *tc = tcase_create("counters");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_get_layers);
        tcase_add_test(tc, test_miss_counts_failed);
        tcase_add_test(tc, test_register_bad_pages);
        tcase_add_test(tc, test_bad_counter_refused);
        tcase_add_test(tc, test_reregister_replaces);
        tcase_add_test(tc, test_other_process_woken);
        tcase_add_test(tc, test_sigkill_with_counted_gets);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(counters_suite)
