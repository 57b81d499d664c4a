/* SPDX-License-Identifier: MIT */
/*
 * A GPU client SIGKILLed with copies in flight: the daemon keeps serving,
 * closes its IPC mappings (the dead client's 1 GiB of GPU memory is given
 * back to the driver, which a stale mapping would prevent), and another GPU
 * client still loads what a third one stored. Exits 77 without a GPU.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "gpu-common.h"

#define NS_NAME    "gpu-death-model"
#define KEEP       64u
#define DOOMED_GIB 1u
#define SALT       5u

struct death {
        const char *sock;
        struct kvc_key seq;
        int fd;                 /* ready byte (doomed) or free bytes (probe) */
};

static int put_or_check(const struct death *t, const char *name, bool put)
{
        struct kvc_block_ref refs[KEEP];
        uint8_t st[KEEP], *host = malloc(E2E_BLOCK_BYTES), *want = malloc(E2E_BLOCK_BYTES);
        void *base;
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(host && want, "malloc");
        CHILD_ASSERT(e2e_open(t->sock, name, NS_NAME, &c, &ns) == 0, "open");
        if (gpu_pool(c, 1, KEEP, E2E_BLOCK_BYTES, &base, &p))
                return 1;
        for (uint32_t i = 0; i < KEEP; i++) {
                refs[i] = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = i };
                kvc_key_private(&t->seq, i, &refs[i].key);
                e2e_fill_block(want, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, SALT);
                if (put)
                        CHILD_CUDA(cudaMemcpy(kvc_pool_slot(p, i), want, E2E_BLOCK_BYTES, cudaMemcpyHostToDevice));
        }
        rc = put ? kvc_put(c, ns, p, refs, KEEP, st) : kvc_get(c, ns, p, refs, KEEP, st);
        CHILD_ASSERT(rc == (int)KEEP, "%s: %d (%s)", put ? "put" : "get", rc, kvc_last_error(c));
        for (uint32_t i = 0; !put && i < KEEP; i++) {
                CHILD_CUDA(cudaMemcpy(host, kvc_pool_slot(p, i), E2E_BLOCK_BYTES, cudaMemcpyDeviceToHost));
                e2e_fill_block(want, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, SALT);
                CHILD_ASSERT(e2e_memdiff(host, want, E2E_BLOCK_BYTES) < 0, "block %u loaded wrong", i);
        }
        kvc_pool_free(p);
        kvc_disconnect(c);
        cudaFree(base);
        free(host);
        free(want);
        return 0;
}

static int keeper(void *arg)
{
        return put_or_check(arg, "gpu-keeper", true);
}

static int survivor(void *arg)
{
        return put_or_check(arg, "gpu-survivor", false);
}

/* Free GPU memory as a fresh process sees it, written to t->fd. */
static int probe(void *arg)
{
        const struct death *t = arg;
        size_t free_b = 0, total = 0;
        uint64_t v;

        CHILD_CUDA(cudaMemGetInfo(&free_b, &total));
        v = free_b;
        CHILD_ASSERT(write(t->fd, &v, sizeof(v)) == sizeof(v), "write");
        return 0;
}

static uint64_t gpu_free_bytes(struct death *t)
{
        int p[2];
        uint64_t v = 0;

        ck_assert_int_eq(pipe(p), 0);
        t->fd = p[1];
        E2E_ASSERT_CHILD_OK(e2e_fork(probe, t), "memory probe");
        close(p[1]);
        ck_assert_int_eq(read(p[0], &v, sizeof(v)), (int)sizeof(v));
        close(p[0]);
        return v;
}

/* 1 GiB pool; Puts of all of it and Gets of the keeper's blocks in flight,
 * then it says so and waits to be killed. */
static int doomed(void *arg)
{
        const struct death *t = arg;
        const uint32_t slots = (uint32_t)((uint64_t)DOOMED_GIB << 30) / E2E_BLOCK_BYTES;
        struct kvc_block_ref *refs = calloc(slots, sizeof(*refs));
        uint8_t *st = calloc(slots, 1);
        uint32_t ns, batch;
        kvc_client *c;
        kvc_pool *p;
        uint64_t id;
        void *base;
        int rc;

        CHILD_ASSERT(refs && st, "calloc");
        CHILD_ASSERT(e2e_open(t->sock, "gpu-doomed", NS_NAME, &c, &ns) == 0, "open");
        if (gpu_pool(c, 1, slots, E2E_BLOCK_BYTES, &base, &p))
                return 1;
        batch = kvc_max_items(c) < 256 ? kvc_max_items(c) : 256;
        for (uint32_t i = 0; i < slots; i++) {
                kvc_key_private(&t->seq, i < KEEP ? i : 1000000u + i, &refs[i].key);
                refs[i].layer = i % E2E_LAYERS;
                refs[i].slot = i;
        }
        /* Up to the daemon's in-flight limit: Gets of the keeper's blocks
         * first (into their slots), then Puts. */
        rc = kvc_get_submit(c, ns, p, refs, KEEP, st, &id);
        CHILD_ASSERT(rc == 0, "get_submit: %s", kvc_strerror(rc));
        for (uint32_t i = KEEP, k = 1; i + batch <= slots && k < 48; i += batch, k++) {
                rc = kvc_put_submit(c, ns, p, refs + i, batch, st + i, &id);
                CHILD_ASSERT(rc == 0, "put_submit: %s", kvc_strerror(rc));
        }
        CHILD_ASSERT(write(t->fd, "r", 1) == 1, "ready");
        for (;;)
                pause();
}

START_TEST(test_kill_gpu_client_mid_transfer)
{
        struct kvd_test_daemon d;
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;
        uint64_t before, after = 0;
        struct death t;
        uint32_t last;
        char why[96];
        int p[2];
        pid_t pid;
        char b;

        /* Room for the keeper's blocks and every doomed Put: no eviction. */
        E2E_START(&d, "--host-bytes", "256M", );
        t.sock = d.socket_path;
        ck_assert_int_eq(kvc_key_sequence_new(&t.seq), 0);
        E2E_ASSERT_CHILD_OK(e2e_fork(keeper, &t), "keeper");
        before = gpu_free_bytes(&t);

        ck_assert_int_eq(pipe(p), 0);
        t.fd = p[1];
        pid = e2e_fork(doomed, &t);
        close(p[1]);
        ck_assert_msg(read(p[0], &b, 1) == 1, "the doomed client died before it was ready");
        close(p[0]);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_ge(e2e_wait_child(pid, 10000, why, sizeof(why)), 0);

        ck_assert_int_eq(kvc_connect(d.socket_path, "check", &c), 0);
        ck_assert_int_eq(e2e_wait_clients(c, 1, 10000, &last), 0);
        ck_assert(kvd_test_daemon_alive(&d));
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        ck_assert_uint_eq(s->pools_cuda, 0);
        kvc_stats_free(s);
        /* Copies still in flight hold the mapping a little longer; then the
         * driver must get the dead client's memory back. */
        for (int i = 0; i < 50; i++) {
                after = gpu_free_bytes(&t);
                if (after + (256u << 20) >= before)
                        break;
                usleep(200 * 1000);
        }
        ck_assert_msg(after + (256u << 20) >= before,
                      "GPU memory not given back: %llu MiB free before the doomed client, %llu MiB after",
                      (unsigned long long)(before >> 20), (unsigned long long)(after >> 20));

        E2E_ASSERT_CHILD_OK(e2e_fork(survivor, &t), "survivor");
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

static Suite *gpu_death_suite(void)
{
        Suite *s = suite_create("gpu-clientdeath");
        TCase *tc = tcase_create("death");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_kill_gpu_client_mid_transfer);
        suite_add_tcase(s, tc);
        return s;
}

KVD_GPU_MAIN("gpu-clientdeath", gpu_death_suite)
