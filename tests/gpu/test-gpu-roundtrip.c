/* SPDX-License-Identifier: MIT */
/*
 * GPU round trip: one client stores blocks out of its GPU pool, more than
 * the host tier holds, so most go on to the SSD tier; another client (another
 * process, another pool layout) loads them all into its GPU pool and every
 * byte must match. Exits 77 without a GPU.
 */
#include <stdlib.h>
#include <string.h>

#include "gpu-common.h"
#include "ssd-common.h"

#define NS_NAME   "gpu-roundtrip-model"
#define N_BLOCKS  6144u         /* 48 MiB of 8 KiB blocks through a 16 MiB host tier */
#define SALT      11u

struct rt {
        const char *sock;
        struct kvc_key seq;
};

static void ref_of(const struct rt *t, uint32_t i, uint32_t slot, struct kvc_block_ref *ret)
{
        *ret = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = slot };
        kvc_key_private(&t->seq, i, &ret->key);
}

static uint32_t batch_of(kvc_client *c)
{
        return kvc_max_items(c) < 512 ? kvc_max_items(c) : 512;
}

/* Writer: 2 allocations of N/2 slots; fills every slot, Puts them all. */
static int writer(void *arg)
{
        const struct rt *t = arg;
        static struct kvc_block_ref refs[N_BLOCKS];
        static uint8_t st[N_BLOCKS];
        uint8_t *host = malloc(E2E_BLOCK_BYTES);
        void *bases[2];
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns, batch;

        CHILD_ASSERT(host, "malloc");
        CHILD_ASSERT(e2e_open(t->sock, "gpu-writer", NS_NAME, &c, &ns) == 0, "open");
        if (gpu_pool(c, 2, N_BLOCKS / 2, E2E_BLOCK_BYTES, bases, &p))
                return 1;
        for (uint32_t i = 0; i < N_BLOCKS; i++) {
                ref_of(t, i, i, &refs[i]);
                e2e_fill_block(host, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, SALT);
                CHILD_CUDA(cudaMemcpy(kvc_pool_slot(p, i), host, E2E_BLOCK_BYTES, cudaMemcpyHostToDevice));
        }
        batch = batch_of(c);
        for (uint32_t i = 0; i < N_BLOCKS; i += batch) {
                uint32_t n = N_BLOCKS - i < batch ? N_BLOCKS - i : batch;
                int rc = kvc_put(c, ns, p, refs + i, n, st + i);

                CHILD_ASSERT(rc == (int)n, "put at %u: %d (%s: %s)", i, rc, rc < 0 ? kvc_strerror(rc) : "short",
                             kvc_last_error(c));
        }
        kvc_pool_free(p);
        kvc_disconnect(c);
        for (int i = 0; i < 2; i++)
                cudaFree(bases[i]);
        free(host);
        return 0;
}

/* Reader: 3 allocations (another layout), slots in reverse order. */
static int reader(void *arg)
{
        const struct rt *t = arg;
        static struct kvc_block_ref refs[N_BLOCKS];
        static uint8_t st[N_BLOCKS];
        uint8_t *got = malloc(E2E_BLOCK_BYTES), *want = malloc(E2E_BLOCK_BYTES);
        void *bases[3];
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns, batch, bad = 0;

        CHILD_ASSERT(got && want, "malloc");
        CHILD_ASSERT(e2e_open(t->sock, "gpu-reader", NS_NAME, &c, &ns) == 0, "open");
        if (gpu_pool(c, 3, N_BLOCKS / 3, E2E_BLOCK_BYTES, bases, &p))
                return 1;
        CHILD_CUDA(cudaMemset(bases[0], 0xee, (size_t)N_BLOCKS / 3 * E2E_BLOCK_BYTES));
        for (uint32_t i = 0; i < N_BLOCKS; i++)
                ref_of(t, i, N_BLOCKS - 1 - i, &refs[i]);
        batch = batch_of(c);
        for (uint32_t i = 0; i < N_BLOCKS; i += batch) {
                uint32_t n = N_BLOCKS - i < batch ? N_BLOCKS - i : batch;
                int rc = kvc_get(c, ns, p, refs + i, n, st + i);

                CHILD_ASSERT(rc == (int)n, "get at %u: %d (%s: %s)", i, rc, rc < 0 ? kvc_strerror(rc) : "misses",
                             kvc_last_error(c));
        }
        for (uint32_t i = 0; i < N_BLOCKS; i++) {
                CHILD_CUDA(cudaMemcpy(got, kvc_pool_slot(p, refs[i].slot), E2E_BLOCK_BYTES,
                                      cudaMemcpyDeviceToHost));
                e2e_fill_block(want, E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, SALT);
                if (e2e_memdiff(got, want, E2E_BLOCK_BYTES) >= 0 && bad++ < 5)
                        fprintf(stderr, "block %u (slot %u): byte %ld differs\n", i, refs[i].slot,
                                e2e_memdiff(got, want, E2E_BLOCK_BYTES));
        }
        CHILD_ASSERT(bad == 0, "%u of %u blocks came back with other bytes", bad, N_BLOCKS);
        kvc_pool_free(p);
        kvc_disconnect(c);
        for (int i = 0; i < 3; i++)
                cudaFree(bases[i]);
        free(got);
        free(want);
        return 0;
}

START_TEST(test_gpu_host_ssd_gpu)
{
        struct kvd_test_daemon d;
        struct ssd_dir dir;
        struct kvc_stats *s = NULL;
        const struct kvc_tier_stats *ssd;
        kvc_client *c = NULL;
        struct rt t;
        uint32_t last;

        ssd_dir_make(&dir);
        /* 4 MiB pieces: the 16 MiB host pool is pinned in 4 registrations. */
        setenv("KVDRIVE_CUDA_PIN_PIECE", "4194304", 1);
        E2E_START(&d, "--host-bytes", "16M", "--ssd-dir", dir.path, "--ssd-bytes", "256M", );
        t.sock = d.socket_path;
        ck_assert_int_eq(kvc_key_sequence_new(&t.seq), 0);
        E2E_ASSERT_CHILD_OK(e2e_fork(writer, &t), "writer");
        E2E_ASSERT_CHILD_OK(e2e_fork(reader, &t), "reader");

        ck_assert_int_eq(kvc_connect(d.socket_path, "check", &c), 0);
        ck_assert_int_eq(e2e_wait_clients(c, 1, 10000, &last), 0);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        ck_assert_str_eq(s->device_backends, "memfd,cuda");
        ck_assert_msg(strstr(s->cuda, "ready: ") && strstr(s->cuda, "pinned in 4 pieces"), "cuda: %s", s->cuda);
        ck_assert_uint_eq(s->pools_cuda, 0);
        ssd = e2e_tier(s, "ssd");
        ck_assert_ptr_nonnull(ssd);
        ck_assert_msg(ssd->promotions > 0, "no block came back from the SSD tier");
        ck_assert_uint_eq(ssd->crc_failures, 0);
        kvc_stats_free(s);
        kvc_disconnect(c);
        E2E_STOP(&d);
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *gpu_roundtrip_suite(void)
{
        Suite *s = suite_create("gpu-roundtrip");
        TCase *tc = tcase_create("roundtrip");

        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_gpu_host_ssd_gpu);
        suite_add_tcase(s, tc);
        return s;
}

KVD_GPU_MAIN("gpu-roundtrip", gpu_roundtrip_suite)
