/* SPDX-License-Identifier: MIT */
/*
 * CUDA pool registration where no GPU is needed: every malformed CUDA
 * RegisterPool is refused before the daemon touches CUDA (the module stays
 * unloaded), a missing module or an absent GPU gives E_UNSUPPORTED, and
 * memfd pools keep working after each refusal. The GPU data path itself is
 * tests/gpu/.
 *
 * $KVD_TEST_CUDA_MODULE (set by meson where the module is built) is the
 * build tree's kvdrive-cuda.so.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define NS_NAME "e2e-cuda-model"
#define MISSING "/nonexistent/kvdrive-cuda.so"

static const char *built_module(void)
{
        const char *m = getenv("KVD_TEST_CUDA_MODULE");

        return m && *m ? m : NULL;
}

/* A memfd pool still registers and round-trips a block. */
static void assert_memfd_works(const char *sock)
{
        struct kvc_block_ref ref = { .layer = 1, .slot = 0 };
        uint8_t *want = malloc(E2E_BLOCK_BYTES);
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st;
        uint32_t ns;

        ck_assert(want);
        ck_assert_int_eq(e2e_open(sock, "memfd-after-cuda", NS_NAME, &c, &ns), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 2, E2E_BLOCK_BYTES, &p), 0);
        ck_assert_int_eq(kvc_key_sequence_new(&ref.key), 0);
        e2e_fill_block(want, E2E_BLOCK_BYTES, &ref.key, ref.layer, 7);
        memcpy(kvc_pool_slot(p, 0), want, E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, &ref, 1, &st), 1);
        ref.slot = 1;
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, &ref, 1, &st), 1);
        ck_assert_int_eq(e2e_memdiff(kvc_pool_slot(p, 1), want, E2E_BLOCK_BYTES), -1);
        kvc_pool_free(p);
        kvc_disconnect(c);
        free(want);
}

static struct kvc_stats *stats(const char *sock)
{
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;

        ck_assert_int_eq(kvc_connect(sock, "stats", &c), 0);
        E2E_ASSERT_RC(c, kvc_stats_get(c, &s), 0);
        kvc_disconnect(c);
        return s;
}

/* A well-formed CUDA pool of two allocations whose handles are made up. */
static int register_fake(kvc_client *c, kvc_pool **ret)
{
        static uint8_t fake_dev[2][4 * E2E_BLOCK_BYTES];
        struct kvc_cuda_alloc a[2];
        struct kvc_cuda_pool_opts o = { .size = sizeof(o), .device = 0 };

        memset(a, 0, sizeof(a));
        for (int i = 0; i < 2; i++) {
                memset(a[i].ipc_handle, 0x40 + i, sizeof(a[i].ipc_handle));
                a[i].dev_ptr = fake_dev[i];
                a[i].slot_count = 4;
        }
        return kvc_pool_register_cuda(c, a, 2, E2E_BLOCK_BYTES, &o, ret);
}

/* ---- malformed requests, on a raw connection ---------------------------- */

struct raw_pool {
        Kvdrive__RegisterPool rp;
        Kvdrive__CudaAllocation ca[3];
        Kvdrive__CudaAllocation *cap[3];
        uint8_t handles[3][80];
        ProtobufCBinaryData ev[2];
        uint8_t evh[2][64];
};

/* Two allocations of 4 slots each, valid in shape. */
static void raw_pool_init(struct raw_pool *r)
{
        memset(r, 0, sizeof(*r));
        kvdrive__register_pool__init(&r->rp);
        r->rp.backend = KVDRIVE__BACKEND__BACKEND_CUDA;
        r->rp.slot_count = 8;
        r->rp.slot_bytes = E2E_BLOCK_BYTES;
        for (int i = 0; i < 3; i++) {
                kvdrive__cuda_allocation__init(&r->ca[i]);
                memset(r->handles[i], 0x50 + i, sizeof(r->handles[i]));
                r->ca[i].ipc_mem_handle = (ProtobufCBinaryData){ 64, r->handles[i] };
                r->ca[i].slot_count = 4;
                r->cap[i] = &r->ca[i];
        }
        for (int i = 0; i < 2; i++)
                r->ev[i] = (ProtobufCBinaryData){ 64, r->evh[i] };
        r->rp.n_cuda_allocations = 2;
        r->rp.cuda_allocations = r->cap;
        r->rp.cuda_pci_bus_id = (char *)"";
}

/* Sends r (with pass_fd if >= 0) and returns the error code, -1 if none. */
static int raw_register(int fd, uint64_t id, struct raw_pool *r, int pass_fd, char *msg, size_t size)
{
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *resp = NULL;
        int rc, code;

        req.id = id;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_POOL;
        req.register_pool = &r->rp;
        rc = kvd_test_raw_call(fd, &req, pass_fd, &resp);
        ck_assert_msg(rc == 0, "request %llu: no reply: %s", (unsigned long long)id, strerror(-rc));
        ck_assert_uint_eq(resp->id, id);
        code = kvd_test_error_code(resp);
        snprintf(msg, size, "%s", code >= 0 && resp->error->message ? resp->error->message : "");
        kvdrive__response__free_unpacked(resp, NULL);
        return code;
}

enum bad_kind {
        BAD_HANDLE_SHORT, BAD_HANDLE_LONG, BAD_NO_ALLOCS, BAD_SUM_LOW, BAD_SUM_HIGH, BAD_ZERO_SLOTS,
        BAD_OFFSET_OVERFLOW, BAD_BUS_ID, BAD_NEG_DEVICE, BAD_EVENT_SIZE, BAD_WITH_FD, BAD_MEMFD_WITH_CUDA,
        BAD_COUNT
};

static const char *const bad_names[BAD_COUNT] = {
        "63-byte handle", "80-byte handle", "no allocations", "slots sum below slot_count",
        "slots sum above slot_count", "allocation of 0 slots", "offset + slots overflows",
        "bus id with junk", "negative ordinal", "33-byte event handle", "an fd with a CUDA pool",
        "memfd pool with CUDA fields",
};

static void make_bad(struct raw_pool *r, enum bad_kind k)
{
        raw_pool_init(r);
        switch (k) {
        case BAD_HANDLE_SHORT:
                r->ca[1].ipc_mem_handle.len = 63;
                break;
        case BAD_HANDLE_LONG:
                r->ca[0].ipc_mem_handle.len = 80;
                break;
        case BAD_NO_ALLOCS:
                r->rp.n_cuda_allocations = 0;
                break;
        case BAD_SUM_LOW:
                r->rp.slot_count = 9;
                break;
        case BAD_SUM_HIGH:
                r->rp.n_cuda_allocations = 3;
                break;
        case BAD_ZERO_SLOTS:
                r->ca[1].slot_count = 0;
                r->rp.slot_count = 4;
                break;
        case BAD_OFFSET_OVERFLOW:
                r->ca[1].offset = UINT64_MAX - E2E_BLOCK_BYTES;
                break;
        case BAD_BUS_ID:
                r->rp.cuda_pci_bus_id = (char *)"0000:17:00.0; rm -rf";
                break;
        case BAD_NEG_DEVICE:
                r->rp.cuda_device = -1;
                break;
        case BAD_EVENT_SIZE:
                r->ev[1].len = 33;
                r->rp.n_cuda_event_handles = 2;
                r->rp.cuda_event_handles = r->ev;
                break;
        case BAD_WITH_FD:
        case BAD_COUNT:
                break;
        case BAD_MEMFD_WITH_CUDA:
                r->rp.backend = KVDRIVE__BACKEND__BACKEND_MEMFD;
                break;
        }
}

START_TEST(test_malformed_refused_before_cuda)
{
        struct kvd_test_daemon d;
        const char *mod = built_module() ? built_module() : MISSING;
        struct kvc_stats *s;
        struct raw_pool r;
        char msg[256];
        int fd, mfd;

        E2E_START(&d, "--cuda-module", mod, );
        fd = kvd_test_raw_connect(d.socket_path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(kvd_test_raw_hello(fd, 1, NULL, NULL), 0);
        for (int k = 0; k < BAD_COUNT; k++) {
                bool with_fd = k == BAD_WITH_FD || k == BAD_MEMFD_WITH_CUDA;
                int code;

                mfd = with_fd ? kvd_test_memfd(8 * E2E_BLOCK_BYTES, true) : -1;
                make_bad(&r, (enum bad_kind)k);
                code = raw_register(fd, 10 + (uint64_t)k, &r, mfd, msg, sizeof(msg));
                ck_assert_msg(code == KVDRIVE__ERROR_CODE__E_BAD_ARG, "%s: error %d ('%s'), want E_BAD_ARG",
                              bad_names[k], code, msg);
                ck_assert_msg(*msg, "%s: an error without a message", bad_names[k]);
                if (mfd >= 0)
                        close(mfd);
        }
        close(fd);

        /* None of that loaded the module or left a pool behind. */
        s = stats(d.socket_path);
        ck_assert_msg(strncmp(s->cuda, "not loaded", 10) == 0, "cuda: '%s'", s->cuda);
        ck_assert_str_eq(s->device_backends, "memfd");
        ck_assert_uint_eq(s->pools_cuda, 0);
        ck_assert_uint_eq(s->pools_memfd, 0);
        kvc_stats_free(s);
        assert_memfd_works(d.socket_path);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_missing_module)
{
        struct kvd_test_daemon d;
        struct kvc_stats *s;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;

        E2E_START(&d, "--cuda-module", MISSING, );
        ck_assert_int_eq(kvc_connect(d.socket_path, "cuda-client", &c), 0);
        for (int i = 0; i < 2; i++) {   /* refused the same way again */
                E2E_ASSERT_RC(c, register_fake(c, &p), -KVC_E_UNSUPPORTED);
                ck_assert_msg(strstr(kvc_last_error(c), "cannot load the CUDA module"), "message: '%s'",
                              kvc_last_error(c));
                ck_assert_ptr_null(p);
        }
        kvc_disconnect(c);
        s = stats(d.socket_path);
        ck_assert_msg(strncmp(s->cuda, "unavailable: ", 13) == 0, "cuda: '%s'", s->cuda);
        ck_assert_str_eq(s->device_backends, "memfd");
        ck_assert_uint_eq(s->pools_cuda, 0);
        kvc_stats_free(s);
        assert_memfd_works(d.socket_path);
        E2E_STOP(&d);
}
END_TEST

/* The real module on this host: no GPU here gives E_UNSUPPORTED; on a GPU
 * host the made-up handles are refused by cudaIpcOpenMemHandle instead. */
START_TEST(test_module_without_gpu)
{
        struct kvd_test_daemon d;
        struct kvc_stats *s;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        int rc;

        if (!built_module()) {
                fprintf(stderr, "# no CUDA module in this build (nvcc missing): nothing to load\n");
                return;
        }
        E2E_START(&d, "--cuda-module", built_module(), );
        ck_assert_int_eq(kvc_connect(d.socket_path, "cuda-client", &c), 0);
        rc = register_fake(c, &p);
        ck_assert_msg(rc == -KVC_E_UNSUPPORTED || rc == -KVC_E_BAD_ARG, "register: %d (%s: '%s')", rc,
                      kvc_strerror(rc), kvc_last_error(c));
        if (rc == -KVC_E_UNSUPPORTED)
                ck_assert_msg(strstr(kvc_last_error(c), "no CUDA device"), "message: '%s'", kvc_last_error(c));
        kvc_disconnect(c);
        s = stats(d.socket_path);
        if (rc == -KVC_E_UNSUPPORTED) {
                ck_assert_msg(strncmp(s->cuda, "unavailable: ", 13) == 0, "cuda: '%s'", s->cuda);
                ck_assert_str_eq(s->device_backends, "memfd");
        } else {
                ck_assert_str_eq(s->device_backends, "memfd,cuda");
        }
        ck_assert_uint_eq(s->pools_cuda, 0);
        kvc_stats_free(s);
        assert_memfd_works(d.socket_path);
        E2E_STOP(&d);
}
END_TEST

START_TEST(test_kvdrivectl_reports_backends)
{
        const char *ctl = getenv("KVDRIVECTL");
        struct kvd_test_daemon d;
        kvc_client *c = NULL;
        kvc_pool *p = NULL, *q = NULL;
        char *out = NULL;
        int status;

        ck_assert_msg(ctl && *ctl, "$KVDRIVECTL is not set (run the tests with meson test)");
        E2E_START(&d, "--cuda-module", MISSING, );
        ck_assert_int_eq(kvc_connect(d.socket_path, "pool-holder", &c), 0);
        E2E_ASSERT_RC(c, kvc_pool_create(c, 4, E2E_BLOCK_BYTES, &p), 0);
        E2E_ASSERT_RC(c, register_fake(c, &q), -KVC_E_UNSUPPORTED);
        {
                const char *argv[] = { ctl, "--socket", d.socket_path, "status", NULL };

                ck_assert_int_eq(kvd_test_run_capture(argv, 10000, &out, &status), 0);
        }
        ck_assert_msg(status == 0, "kvdrivectl status: status %d", status);
        ck_assert_msg(strstr(out, "backends:  memfd\n"), "%s", out);
        ck_assert_msg(strstr(out, "cuda:      unavailable: cannot load the CUDA module"), "%s", out);
        ck_assert_msg(strstr(out, "pools:     1 memfd, 0 cuda\n"), "%s", out);
        free(out);
        kvc_pool_free(p);
        kvc_disconnect(c);
        E2E_STOP(&d);
}
END_TEST

static Suite *cuda_register_suite(void)
{
        Suite *s = suite_create("e2e-cuda-register");
        TCase *tc = tcase_create("register");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_malformed_refused_before_cuda);
        tcase_add_test(tc, test_missing_module);
        tcase_add_test(tc, test_module_without_gpu);
        tcase_add_test(tc, test_kvdrivectl_reports_backends);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(cuda_register_suite)
