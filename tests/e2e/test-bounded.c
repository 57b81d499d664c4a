/* SPDX-License-Identifier: MIT */
/*
 * Bounded work: no request holds the daemon's loop for long. A Delete or
 * Lookup that visits keys x layers runs in slices, so requests sent after
 * it (on its connection or another) are answered before it ends; and every
 * such request counts against max-inflight-per-client.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check-main.h"
#include "common.h"

#define KEYS 2048u              /* max-items */
#define LAYERS 1024u            /* the cap on a namespace's layers */

static const struct kvc_geometry deep = {
        .layers = LAYERS, .kv_heads = 2, .head_dim = 64, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};

static int connect_hello(struct kvd_test_daemon *d)
{
        int fd = kvd_test_raw_connect(d->socket_path);

        ck_assert_msg(fd >= 0, "connect: %s", strerror(-fd));
        ck_assert_int_eq(kvd_test_raw_hello(fd, 1, NULL, NULL), 0);
        return fd;
}

static uint32_t register_deep(int fd, const char *name)
{
        Kvdrive__Geometry geo = KVDRIVE__GEOMETRY__INIT;
        Kvdrive__RegisterNamespace rn = KVDRIVE__REGISTER_NAMESPACE__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        uint32_t ns;

        geo.layers = deep.layers;
        geo.kv_heads = deep.kv_heads;
        geo.head_dim = deep.head_dim;
        geo.dtype = (Kvdrive__Dtype)deep.dtype;
        geo.block_tokens = deep.block_tokens;
        rn.name.data = (uint8_t *)name;
        rn.name.len = strlen(name);
        rn.geometry = &geo;
        req.id = 2;
        req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_NAMESPACE;
        req.register_namespace = &rn;
        ck_assert_int_eq(kvd_test_raw_call(fd, &req, -1, &r), 0);
        ck_assert_int_eq(r->body_case, KVDRIVE__RESPONSE__BODY_REGISTER_NAMESPACE);
        ns = r->register_namespace->ns_id;
        kvdrive__response__free_unpacked(r, NULL);
        return ns;
}

/* KEYS keys of sequence seed, as the wire wants them. */
struct keys {
        Kvdrive__Key k[KEYS];
        Kvdrive__Key *p[KEYS];
};

static void make_keys(struct keys *ks, uint64_t seed)
{
        struct kvc_key seq = { seed, seed ^ 0x5eed }, k;

        for (uint32_t i = 0; i < KEYS; i++) {
                kvc_key_private(&seq, i, &k);
                kvdrive__key__init(&ks->k[i]);
                ks->k[i].hi = k.hi;
                ks->k[i].lo = k.lo;
                ks->p[i] = &ks->k[i];
        }
}

static void send_delete(int fd, uint64_t id, uint32_t ns, struct keys *ks)
{
        Kvdrive__Delete del = KVDRIVE__DELETE__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;

        del.ns_id = ns;
        del.n_keys = KEYS;
        del.keys = ks->p;
        del.all_layers = true;
        req.id = id;
        req.body_case = KVDRIVE__REQUEST__BODY_DELETE;
        req.delete_ = &del;
        ck_assert_int_eq(kvd_test_raw_send(fd, &req, -1), 0);
}

static void send_stats(int fd, uint64_t id)
{
        Kvdrive__Stats st = KVDRIVE__STATS__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;

        req.id = id;
        req.body_case = KVDRIVE__REQUEST__BODY_STATS;
        req.stats = &st;
        ck_assert_int_eq(kvd_test_raw_send(fd, &req, -1), 0);
}

/* Receives one response and checks its id and body (or error code). */
static void expect(int fd, uint64_t id, Kvdrive__Response__BodyCase body, int error_code)
{
        Kvdrive__Response *r = NULL;
        char b[256];
        int rc = kvd_test_raw_recv(fd, 30000, &r);

        ck_assert_msg(rc == 0, "waiting for reply %llu: %s", (unsigned long long)id, strerror(-rc));
        ck_assert_msg(r->id == id && r->body_case == body && (error_code < 0 || kvd_test_error_code(r) == error_code),
                      "want reply %llu (body %d, error %d), got %llu: %s", (unsigned long long)id, (int)body,
                      error_code, (unsigned long long)r->id, kvd_test_response_str(r, b, sizeof(b)));
        kvdrive__response__free_unpacked(r, NULL);
}

/* A Delete of 2048 keys x 1024 layers (2M index probes) is done in slices:
 * a Stats sent after it on the same connection is answered first, and so
 * is another client meanwhile. */
START_TEST(test_long_delete_runs_in_slices)
{
        struct kvd_test_daemon d;
        struct keys *ks = malloc(sizeof(*ks));
        Kvdrive__Response *r = NULL;
        int fd, other;
        uint32_t ns;

        ck_assert_ptr_nonnull(ks);
        E2E_START(&d);
        fd = connect_hello(&d);
        ns = register_deep(fd, "e2e-deep-model");
        make_keys(ks, 1);
        send_delete(fd, 10, ns, ks);
        send_stats(fd, 11);
        expect(fd, 11, KVDRIVE__RESPONSE__BODY_STATS, -1);
        /* The Delete is still going: another client is served meanwhile. */
        other = connect_hello(&d);
        send_stats(other, 20);
        expect(other, 20, KVDRIVE__RESPONSE__BODY_STATS, -1);
        ck_assert_msg(kvd_test_raw_recv(fd, 0, &r) == -ETIMEDOUT, "the Delete ended before another client's Stats");
        expect(fd, 10, KVDRIVE__RESPONSE__BODY_DELETE, -1);
        close(other);
        close(fd);
        free(ks);
        E2E_STOP(&d);
}
END_TEST

/* Requests that stay in flight count against max-inflight-per-client,
 * Deletes included: the second long one is refused while the first runs. */
START_TEST(test_long_requests_count_in_flight)
{
        struct kvd_test_daemon d;
        struct keys *ks = malloc(sizeof(*ks));
        int fd;
        uint32_t ns;

        ck_assert_ptr_nonnull(ks);
        E2E_START(&d, "--max-inflight-per-client", "1",);
        fd = connect_hello(&d);
        ns = register_deep(fd, "e2e-deep-model");
        make_keys(ks, 2);
        send_delete(fd, 30, ns, ks);
        send_delete(fd, 31, ns, ks);
        expect(fd, 31, KVDRIVE__RESPONSE__BODY_ERROR, KVDRIVE__ERROR_CODE__E_LIMIT);
        expect(fd, 30, KVDRIVE__RESPONSE__BODY_DELETE, -1);
        /* Once it ended, the next one runs. */
        send_delete(fd, 32, ns, ks);
        expect(fd, 32, KVDRIVE__RESPONSE__BODY_DELETE, -1);
        close(fd);
        free(ks);
        E2E_STOP(&d);
}
END_TEST

/* A Lookup longer than a slice answers the same as one done at once. */
START_TEST(test_long_lookup_is_exact)
{
        struct kvd_test_daemon d;
        kvc_client *c;
        kvc_pool *p;
        struct kvc_key *keys = calloc(KEYS, sizeof(*keys)), seq = { 3, 3 };
        uint32_t *prefix = calloc(LAYERS, sizeof(*prefix)), ns;
        struct kvc_block_ref refs[256];
        uint8_t st[256];

        ck_assert(keys && prefix);
        E2E_START(&d);
        ck_assert_int_eq(kvc_connect(d.socket_path, "lookup", &c), 0);
        ck_assert_int_eq(kvc_register_namespace(c, "e2e-deep-model", &deep, &ns, NULL), 0);
        ck_assert_int_eq(kvc_pool_create(c, 256, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < KEYS; i++)
                kvc_key_private(&seq, i, &keys[i]);
        /* All keys at layer 0, the first half at layer 1: 2048 + 1024 + 1022 probes. */
        for (uint32_t layer = 0; layer < 2; layer++)
                for (uint32_t b = 0; b < (layer ? KEYS / 2 : KEYS); b += 256) {
                        for (uint32_t j = 0; j < 256; j++)
                                refs[j] = (struct kvc_block_ref){ .key = keys[b + j], .layer = layer, .slot = j };
                        ck_assert_int_eq(kvc_put(c, ns, p, refs, 256, st), 256);
                }
        ck_assert_int_eq(kvc_lookup(c, ns, keys, KEYS, prefix, LAYERS), 0);
        ck_assert_uint_eq(prefix[0], KEYS);
        ck_assert_uint_eq(prefix[1], KEYS / 2);
        for (uint32_t l = 2; l < LAYERS; l++)
                ck_assert_uint_eq(prefix[l], 0);
        kvc_pool_free(p);
        kvc_disconnect(c);
        free(keys);
        free(prefix);
        E2E_STOP(&d);
}
END_TEST

/* A Put and a Get of max-items blocks start a slice of items per turn of
 * the loop: every item still gets its outcome, and every byte comes back. */
START_TEST(test_large_transfers_are_whole)
{
        struct kvd_test_daemon d;
        kvc_client *c;
        kvc_pool *p;
        struct kvc_block_ref *refs = calloc(KEYS, sizeof(*refs));
        uint8_t *st = malloc(KEYS), *want = malloc((size_t)KEYS * E2E_BLOCK_BYTES);
        struct kvc_key seq = { 4, 4 };
        uint32_t ns;

        ck_assert(refs && st && want);
        E2E_START(&d);
        ck_assert_int_eq(kvc_connect(d.socket_path, "large", &c), 0);
        ck_assert_int_eq(kvc_register_namespace(c, "e2e-large", &e2e_geom, &ns, NULL), 0);
        ck_assert_int_eq(kvc_pool_create(c, KEYS, E2E_BLOCK_BYTES, &p), 0);
        for (uint32_t i = 0; i < KEYS; i++) {
                refs[i] = (struct kvc_block_ref){ .layer = i % E2E_LAYERS, .slot = i };
                kvc_key_private(&seq, i, &refs[i].key);
                e2e_fill_block(kvc_pool_slot(p, i), E2E_BLOCK_BYTES, &refs[i].key, refs[i].layer, 5);
        }
        memcpy(want, kvc_pool_slot(p, 0), (size_t)KEYS * E2E_BLOCK_BYTES);
        E2E_ASSERT_RC(c, kvc_put(c, ns, p, refs, KEYS, st), (int)KEYS);
        memset(kvc_pool_slot(p, 0), 0xee, (size_t)KEYS * E2E_BLOCK_BYTES);
        memset(st, 0xff, KEYS);
        E2E_ASSERT_RC(c, kvc_get(c, ns, p, refs, KEYS, st), (int)KEYS);
        for (uint32_t i = 0; i < KEYS; i++)
                ck_assert_msg(st[i] == KVC_ITEM_OK, "item %u: status %u", i, st[i]);
        ck_assert_msg(e2e_memdiff(kvc_pool_slot(p, 0), want, (size_t)KEYS * E2E_BLOCK_BYTES) < 0,
                      "a block came back with other bytes");
        kvc_pool_free(p);
        kvc_disconnect(c);
        free(refs);
        free(st);
        free(want);
        E2E_STOP(&d);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("bounded");
        TCase *tc = tcase_create("bounded");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_long_delete_runs_in_slices);
        tcase_add_test(tc, test_long_requests_count_in_flight);
        tcase_add_test(tc, test_long_lookup_is_exact);
        tcase_add_test(tc, test_large_transfers_are_whole);
        suite_add_tcase(s, tc);
        return s;
}

KVD_CHECK_MAIN(suite)
