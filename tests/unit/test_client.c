/* SPDX-License-Identifier: MIT */
/*
 * The client library against a fake daemon: a thread of this test that
 * speaks the protocol on a temporary socket and records what arrives. It
 * checks what the library puts on the wire and refuses before sending
 * (namespace fingerprints, the shared flags of Put and Get) and how it
 * decodes replies a real daemon may not send yet (the remote tier's stats),
 * and kvdrivectl's view of those (its text, and its --json against
 * docs/stats-json.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "check-main.h"
#include "daemon.h"
#include "frame.h"
#include "kvdrive.pb-c.h"

#define MAX_ITEMS   64u
#define BLOCK_BYTES 4096u
#define NS_ID       7u
#define POOL_ID     3u
#define N_NODES     2u

struct fake {
        char dir[64];
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        int lfd;
        int stop[2];                    /* a pipe: written to stop the thread */
        pthread_t thread;
        bool remote;                    /* Stats replies carry a remote tier */
        const char *seeds;              /* its seeds (NULL: a short default) */
        /* What arrived, under lock (the test reads it once a call returned). */
        pthread_mutex_t lock;
        unsigned frames;
        unsigned registers;
        uint8_t fingerprint[256];
        size_t fingerprint_len;
        unsigned puts, gets;
        bool shared, durable;
};

static uint8_t rbuf[KVD_FRAME_MAX_DEFAULT + KVD_FRAME_HDR];
static uint8_t sbuf[KVD_FRAME_MAX_DEFAULT];

static void reply(int fd, Kvdrive__Response *r)
{
        size_t len = kvdrive__response__get_packed_size(r);

        ck_assert_uint_le(len, sizeof(sbuf));
        kvdrive__response__pack(r, sbuf);
        ck_assert_int_eq(kvd_frame_send(fd, sbuf, len, -1, 0), 0);
}

/* A StatsReply's remote tier: two nodes, numbers the tests check. */
static void fill_remote(struct fake *f, Kvdrive__RemoteStats *rs, Kvdrive__RemoteNodeStats *nodes,
                        Kvdrive__RemoteNodeStats **ptrs, uint64_t hist[N_NODES][KVC_LOOP_BUCKETS + 2])
{
        rs->seeds = (char *)(f->seeds ? f->seeds : "10.0.0.5:7000,10.0.0.6:7000");
        rs->condition = "ok";
        rs->hits = 310;
        rs->misses = 42;
        rs->writes = 1024;
        rs->write_skips = 3;
        rs->crc_failures = 1;
        rs->errors = 5;
        rs->lookups = 640;
        rs->lookup_hits = 512;
        rs->slot_map_refreshes = 2;
        rs->read_bytes = 20316160;
        rs->write_bytes = 67108864;
        rs->inflight = 4;
        for (unsigned i = 0; i < N_NODES; i++) {
                Kvdrive__RemoteNodeStats *n = &nodes[i];

                kvdrive__remote_node_stats__init(n);
                n->addr = i == 0 ? "10.0.0.5:7000" : "10.0.0.6:7000";
                n->up = i == 0;
                n->slots = 8192;
                n->requests = 1000 + i;
                n->hits = 700 + i;
                n->misses = 21 + i;
                n->read_bytes = 3u * 1024 * 1024 / 2;   /* 1.5 MiB */
                n->write_bytes = 32u * 1024 * 1024;
                n->errors = 1 + i;
                n->timeouts = 2 + i;
                n->moved = 3 + i;
                n->ask = 4 + i;
                /* Node 0: 3 answers in 1000 us, mean 333.3 -> 333. Node 1: none. */
                n->latency_us_sum = i == 0 ? 1000 : 0;
                n->latency_us_max = i == 0 ? 600 : 0;
                memset(hist[i], 0, sizeof(hist[i]));
                if (i == 0) {
                        hist[i][8] = 2;
                        hist[i][10] = 1;
                        /* Past the library's buckets: dropped, not overrun. */
                        hist[i][KVC_LOOP_BUCKETS] = 99;
                        hist[i][KVC_LOOP_BUCKETS + 1] = 99;
                }
                n->n_latency_hist = KVC_LOOP_BUCKETS + 2;
                n->latency_hist = hist[i];
                ptrs[i] = n;
        }
        rs->n_nodes = N_NODES;
        rs->nodes = ptrs;
}

/* Answers one request; false when the request cannot be read. */
static bool serve_one(struct fake *f, int cfd, const uint8_t *payload, size_t len)
{
        Kvdrive__Request *q = kvdrive__request__unpack(NULL, len, payload);
        Kvdrive__Response r = KVDRIVE__RESPONSE__INIT;
        Kvdrive__HelloReply hr = KVDRIVE__HELLO_REPLY__INIT;
        Kvdrive__RegisterNamespaceReply rn = KVDRIVE__REGISTER_NAMESPACE_REPLY__INIT;
        Kvdrive__RegisterPoolReply rp = KVDRIVE__REGISTER_POOL_REPLY__INIT;
        Kvdrive__TransferReply tr = KVDRIVE__TRANSFER_REPLY__INIT;
        Kvdrive__StatsReply sr = KVDRIVE__STATS_REPLY__INIT;
        Kvdrive__RemoteStats rs = KVDRIVE__REMOTE_STATS__INIT;
        Kvdrive__RemoteNodeStats nodes[N_NODES], *ptrs[N_NODES];
        uint64_t hist[N_NODES][KVC_LOOP_BUCKETS + 2];
        Kvdrive__Error err = KVDRIVE__ERROR__INIT;
        uint8_t status[MAX_ITEMS] = { 0 };

        if (!q)
                return false;
        r.id = q->id;
        pthread_mutex_lock(&f->lock);
        f->frames++;
        switch (q->body_case) {
        case KVDRIVE__REQUEST__BODY_HELLO:
                hr.version = KVD_PROTO_VERSION;
                hr.daemon_version = "fake-0";
                hr.max_frame = KVD_FRAME_MAX_DEFAULT;
                hr.max_items = MAX_ITEMS;
                r.body_case = KVDRIVE__RESPONSE__BODY_HELLO;
                r.hello = &hr;
                break;
        case KVDRIVE__REQUEST__BODY_REGISTER_NAMESPACE: {
                const ProtobufCBinaryData *fp = &q->register_namespace->fingerprint;

                f->registers++;
                f->fingerprint_len = fp->len;
                if (fp->len > 0)        /* an empty one has no data */
                        memcpy(f->fingerprint, fp->data,
                               fp->len < sizeof(f->fingerprint) ? fp->len : sizeof(f->fingerprint));
                rn.ns_id = NS_ID;
                rn.block_bytes = BLOCK_BYTES;
                rn.created = true;
                r.body_case = KVDRIVE__RESPONSE__BODY_REGISTER_NAMESPACE;
                r.register_namespace = &rn;
                break;
        }
        case KVDRIVE__REQUEST__BODY_REGISTER_POOL:
                rp.pool_id = POOL_ID;
                r.body_case = KVDRIVE__RESPONSE__BODY_REGISTER_POOL;
                r.register_pool = &rp;
                break;
        case KVDRIVE__REQUEST__BODY_PUT:
        case KVDRIVE__REQUEST__BODY_GET: {
                const Kvdrive__Transfer *t = q->body_case == KVDRIVE__REQUEST__BODY_PUT ? q->put : q->get;

                if (q->body_case == KVDRIVE__REQUEST__BODY_PUT)
                        f->puts++;
                else
                        f->gets++;
                f->shared = t->shared;
                f->durable = t->durable;
                tr.status.data = status;
                tr.status.len = t->n_items;
                tr.done = (uint32_t)t->n_items;
                r.body_case = (Kvdrive__Response__BodyCase)q->body_case;
                if (q->body_case == KVDRIVE__REQUEST__BODY_PUT)
                        r.put = &tr;
                else
                        r.get = &tr;
                break;
        }
        case KVDRIVE__REQUEST__BODY_STATS:
                sr.daemon_version = "fake-0";
                sr.pid = 4242;
                if (f->remote) {
                        fill_remote(f, &rs, nodes, ptrs, hist);
                        sr.remote = &rs;
                }
                r.body_case = KVDRIVE__RESPONSE__BODY_STATS;
                r.stats = &sr;
                break;
        default:
                err.code = KVDRIVE__ERROR_CODE__E_UNKNOWN_TYPE;
                err.message = "the fake daemon does not know it";
                r.body_case = KVDRIVE__RESPONSE__BODY_ERROR;
                r.error = &err;
                break;
        }
        pthread_mutex_unlock(&f->lock);
        reply(cfd, &r);
        kvdrive__request__free_unpacked(q, NULL);
        return true;
}

/* Waits for fd to be readable; false when told to stop. */
static bool wait_readable(struct fake *f, int fd)
{
        struct pollfd p[2] = { { .fd = fd, .events = POLLIN }, { .fd = f->stop[0], .events = POLLIN } };

        while (poll(p, 2, -1) < 0)
                ck_assert_int_eq(errno, EINTR);
        return !(p[1].revents & POLLIN);
}

/* One connection after another (kvdrivectl connects anew), until stopped. */
static void *fake_main(void *arg)
{
        struct fake *f = arg;

        while (wait_readable(f, f->lfd)) {
                int cfd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);

                ck_assert_int_ge(cfd, 0);
                while (wait_readable(f, cfd)) {
                        int fds[KVD_FRAME_MAX_FDS];
                        unsigned nfds = 0;
                        const uint8_t *payload;
                        size_t len;
                        ssize_t n = kvd_frame_recv(cfd, rbuf, sizeof(rbuf), fds, &nfds, 0);

                        for (unsigned i = 0; i < nfds; i++)
                                close(fds[i]);
                        if (n <= 0 || kvd_frame_parse(rbuf, (size_t)n, KVD_FRAME_MAX_DEFAULT, &payload, &len) < 0 ||
                            !serve_one(f, cfd, payload, len))
                                break;
                }
                close(cfd);
        }
        return NULL;
}

static void fake_start(struct fake *f, bool remote, const char *seeds)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        const char *tmp = getenv("TMPDIR");

        memset(f, 0, sizeof(*f));
        f->remote = remote;
        f->seeds = seeds;
        pthread_mutex_init(&f->lock, NULL);
        snprintf(f->dir, sizeof(f->dir), "%s/kvc-fake-XXXXXX", tmp && *tmp && strlen(tmp) < 40 ? tmp : "/tmp");
        ck_assert_ptr_nonnull(mkdtemp(f->dir));
        snprintf(f->path, sizeof(f->path), "%s/kvd.sock", f->dir);
        memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
        f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(f->lfd, 0);
        ck_assert_int_eq(bind(f->lfd, (const struct sockaddr *)&sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(f->lfd, 4), 0);
        ck_assert_int_eq(pipe2(f->stop, O_CLOEXEC), 0);
        ck_assert_int_eq(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
        ck_assert_int_eq(write(f->stop[1], "x", 1), 1);
        ck_assert_int_eq(pthread_join(f->thread, NULL), 0);
        close(f->stop[0]);
        close(f->stop[1]);
        close(f->lfd);
        unlink(f->path);
        rmdir(f->dir);
        pthread_mutex_destroy(&f->lock);
}

static unsigned frames(struct fake *f)
{
        unsigned n;

        pthread_mutex_lock(&f->lock);
        n = f->frames;
        pthread_mutex_unlock(&f->lock);
        return n;
}

static const struct kvc_geometry geo = {
        .layers = 2, .kv_heads = 2, .head_dim = 64, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};

START_TEST(test_fingerprint_on_the_wire)
{
        uint8_t fp[KVC_FINGERPRINT_MAX + 1];
        struct kvc_ns_opts o = { .size = sizeof(o), .name = "fp-model", .geometry = &geo,
                                 .fingerprint = fp, .fingerprint_len = KVC_FINGERPRINT_MAX };
        struct fake f;
        kvc_client *c = NULL;
        uint64_t bb = 0;
        uint32_t ns = 0;

        for (size_t i = 0; i < sizeof(fp); i++)
                fp[i] = (uint8_t)(i * 7 + 1);
        fake_start(&f, false, NULL);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);

        /* The largest fingerprint goes as given, every byte. */
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), 0);
        ck_assert_uint_eq(ns, NS_ID);
        ck_assert_uint_eq(bb, BLOCK_BYTES);
        pthread_mutex_lock(&f.lock);
        ck_assert_uint_eq(f.fingerprint_len, KVC_FINGERPRINT_MAX);
        ck_assert_mem_eq(f.fingerprint, fp, KVC_FINGERPRINT_MAX);
        pthread_mutex_unlock(&f.lock);

        /* kvc_register_namespace() sends none, as the opts form without one. */
        ck_assert_int_eq(kvc_register_namespace(c, "fp-model", &geo, &ns, NULL), 0);
        pthread_mutex_lock(&f.lock);
        ck_assert_uint_eq(f.fingerprint_len, 0);
        ck_assert_uint_eq(f.registers, 2);
        pthread_mutex_unlock(&f.lock);
        o.fingerprint = NULL;
        o.fingerprint_len = 0;
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, NULL), 0);
        pthread_mutex_lock(&f.lock);
        ck_assert_uint_eq(f.fingerprint_len, 0);
        ck_assert_uint_eq(f.registers, 3);
        pthread_mutex_unlock(&f.lock);

        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

START_TEST(test_register_bad_arguments)
{
        uint8_t fp[KVC_FINGERPRINT_MAX + 1] = { 1 };
        struct kvc_ns_opts good = { .size = sizeof(good), .name = "bad-args", .geometry = &geo,
                                    .fingerprint = fp, .fingerprint_len = 16 };
        struct kvc_ns_opts o;
        struct fake f;
        kvc_client *c = NULL;
        uint32_t ns = 12345;
        uint64_t bb = 6789;
        unsigned before;

        fake_start(&f, false, NULL);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);
        before = frames(&f);

        o = good;
        o.fingerprint_len = KVC_FINGERPRINT_MAX + 1;            /* too long */
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o = good;
        o.fingerprint_len = SIZE_MAX;
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o = good;
        o.fingerprint = NULL;                                   /* a length without bytes */
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o = good;
        o.size = sizeof(o) - 1;                                 /* too small */
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o.size = 0;
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o = good;
        o.name = NULL;
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        o = good;
        o.geometry = NULL;
        ck_assert_int_eq(kvc_register_namespace_opts(c, &o, &ns, &bb), -EINVAL);
        ck_assert_int_eq(kvc_register_namespace_opts(c, NULL, &ns, &bb), -EINVAL);
        ck_assert_int_eq(kvc_register_namespace_opts(c, &good, NULL, &bb), -EINVAL);
        ck_assert_int_eq(kvc_register_namespace_opts(NULL, &good, &ns, &bb), -EINVAL);
        /* Refused before anything was sent, outputs untouched. */
        ck_assert_uint_eq(frames(&f), before);
        ck_assert_uint_eq(ns, 12345);
        ck_assert_uint_eq(bb, 6789);

        /* A larger size (a caller built against a later header) is fine. */
        {
                struct {
                        struct kvc_ns_opts o;
                        uint64_t later_field;
                } big = { .o = good, .later_field = 0 };

                big.o.size = sizeof(big);
                ck_assert_int_eq(kvc_register_namespace_opts(c, &big.o, &ns, &bb), 0);
                ck_assert_uint_eq(ns, NS_ID);
        }
        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

/* The reply poll window: out-of-range values refused; calls answer with
 * polling off, on, and at its longest. */
START_TEST(test_poll_window)
{
        const uint32_t windows[] = { 0, KVC_POLL_US_DEFAULT, KVC_POLL_US_MAX };
        struct fake f;
        kvc_client *c = NULL;
        uint32_t ns = 0;

        fake_start(&f, false, NULL);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);
        ck_assert_int_eq(kvc_set_poll_us(NULL, 0), -EINVAL);
        ck_assert_int_eq(kvc_set_poll_us(c, KVC_POLL_US_MAX + 1), -EINVAL);
        for (size_t i = 0; i < sizeof(windows) / sizeof(windows[0]); i++) {
                ck_assert_int_eq(kvc_set_poll_us(c, windows[i]), 0);
                ns = 0;
                ck_assert_int_eq(kvc_register_namespace(c, "poll", &geo, &ns, NULL), 0);
                ck_assert_uint_eq(ns, NS_ID);
        }
        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

START_TEST(test_shared_flags)
{
        struct kvc_block_ref refs[2] = { { .key = { 1, 2 }, .layer = 0, .slot = 0 },
                                         { .key = { 3, 4 }, .layer = 1, .slot = 1 } };
        struct fake f;
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint8_t st[2];
        uint64_t id = 0;
        unsigned before;

        fake_start(&f, false, NULL);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);
        ck_assert_int_eq(kvc_pool_create(c, 2, BLOCK_BYTES, &p), 0);

        ck_assert_int_eq(kvc_put_submit_flags(c, NS_ID, p, refs, 2, KVC_PUT_SHARED, st, &id), 0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(f.shared && !f.durable);
        pthread_mutex_unlock(&f.lock);
        ck_assert_int_eq(kvc_put_submit_flags(c, NS_ID, p, refs, 2, KVC_PUT_SHARED | KVC_PUT_DURABLE, st, &id),
                         0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(f.shared && f.durable);
        pthread_mutex_unlock(&f.lock);
        ck_assert_int_eq(kvc_put(c, NS_ID, p, refs, 2, st), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(!f.shared && !f.durable);
        pthread_mutex_unlock(&f.lock);

        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, 2, KVC_GET_SHARED, st, &id), 0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(f.shared);
        ck_assert_uint_eq(f.gets, 1);
        pthread_mutex_unlock(&f.lock);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, 2, 0, st, &id), 0);
        ck_assert_int_eq(kvc_wait(c, id, -1), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(!f.shared);
        pthread_mutex_unlock(&f.lock);
        ck_assert_int_eq(kvc_get(c, NS_ID, p, refs, 2, st), 2);
        pthread_mutex_lock(&f.lock);
        ck_assert(!f.shared);
        ck_assert_uint_eq(f.gets, 3);
        ck_assert_uint_eq(f.puts, 3);
        pthread_mutex_unlock(&f.lock);

        /* Unknown flags: -EINVAL, nothing sent, no id. */
        before = frames(&f);
        id = 777;
        ck_assert_int_eq(kvc_put_submit_flags(c, NS_ID, p, refs, 2, 1u << 2, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_put_submit_flags(c, NS_ID, p, refs, 2, ~0u, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, 2, 1u << 0, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, 2, KVC_GET_SHARED | 1u << 5, st, &id),
                         -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, 2, ~0u, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(NULL, NS_ID, p, refs, 2, 0, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, NULL, refs, 2, 0, st, &id), -EINVAL);
        ck_assert_int_eq(kvc_get_submit_flags(c, NS_ID, p, refs, MAX_ITEMS + 1, 0, st, &id), -E2BIG);
        ck_assert_uint_eq(frames(&f), before);
        ck_assert_uint_eq(id, 777);

        kvc_pool_free(p);
        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

START_TEST(test_stats_without_remote)
{
        struct fake f;
        kvc_client *c = NULL;
        struct kvc_stats *s = NULL;

        fake_start(&f, false, NULL);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);
        ck_assert_int_eq(kvc_stats_get(c, &s), 0);
        ck_assert_str_eq(s->daemon_version, "fake-0");
        ck_assert_int_eq(s->remote.have, 0);
        ck_assert_uint_eq(s->remote.n_nodes, 0);
        ck_assert_ptr_null(s->remote.nodes);
        ck_assert_str_eq(s->remote.seeds, "");
        ck_assert_ptr_null(kvc_stats_free(s));
        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

START_TEST(test_stats_remote)
{
        char seeds[400];
        struct fake f;
        kvc_client *c = NULL;
        struct kvc_stats *s = NULL;
        const struct kvc_remote_stats *r;
        const struct kvc_remote_node_stats *n;

        /* Seeds longer than the struct's field: cut, NUL-terminated. */
        memset(seeds, 'a', sizeof(seeds) - 1);
        seeds[sizeof(seeds) - 1] = '\0';
        fake_start(&f, true, seeds);
        ck_assert_int_eq(kvc_connect(f.path, "test-client", &c), 0);
        ck_assert_int_eq(kvc_stats_get(c, &s), 0);
        r = &s->remote;
        ck_assert_int_eq(r->have, 1);
        ck_assert_uint_eq(strlen(r->seeds), sizeof(r->seeds) - 1);
        ck_assert_str_eq(r->condition, "ok");
        ck_assert_uint_eq(r->hits, 310);
        ck_assert_uint_eq(r->misses, 42);
        ck_assert_uint_eq(r->writes, 1024);
        ck_assert_uint_eq(r->write_skips, 3);
        ck_assert_uint_eq(r->crc_failures, 1);
        ck_assert_uint_eq(r->errors, 5);
        ck_assert_uint_eq(r->lookups, 640);
        ck_assert_uint_eq(r->lookup_hits, 512);
        ck_assert_uint_eq(r->slot_map_refreshes, 2);
        ck_assert_uint_eq(r->read_bytes, 20316160);
        ck_assert_uint_eq(r->write_bytes, 67108864);
        ck_assert_uint_eq(r->inflight, 4);
        ck_assert_uint_eq(r->n_nodes, N_NODES);
        n = &r->nodes[0];
        ck_assert_str_eq(n->addr, "10.0.0.5:7000");
        ck_assert_int_eq(n->up, 1);
        ck_assert_uint_eq(n->slots, 8192);
        ck_assert_uint_eq(n->requests, 1000);
        ck_assert_uint_eq(n->hits, 700);
        ck_assert_uint_eq(n->misses, 21);
        ck_assert_uint_eq(n->read_bytes, 3u * 1024 * 1024 / 2);
        ck_assert_uint_eq(n->write_bytes, 32u * 1024 * 1024);
        ck_assert_uint_eq(n->errors, 1);
        ck_assert_uint_eq(n->timeouts, 2);
        ck_assert_uint_eq(n->moved, 3);
        ck_assert_uint_eq(n->ask, 4);
        ck_assert_uint_eq(n->latency_us_sum, 1000);
        ck_assert_uint_eq(n->latency_us_max, 600);
        for (unsigned b = 0; b < KVC_LOOP_BUCKETS; b++)
                ck_assert_uint_eq(n->latency_hist[b], b == 8 ? 2 : b == 10 ? 1 : 0);
        n = &r->nodes[1];
        ck_assert_str_eq(n->addr, "10.0.0.6:7000");
        ck_assert_int_eq(n->up, 0);
        ck_assert_uint_eq(n->requests, 1001);
        ck_assert_uint_eq(n->ask, 5);
        ck_assert_ptr_null(kvc_stats_free(s));
        kvc_disconnect(c);
        fake_stop(&f);
}
END_TEST

/* Runs kvdrivectl --socket path stats [--json]; returns its stdout. */
static char *run_ctl(const struct fake *f, bool json)
{
        const char *ctl = getenv("KVDRIVECTL");
        const char *argv[] = { ctl, "--socket", f->path, "stats", json ? "--json" : NULL, NULL };
        char *out = NULL;
        int st = 0;

        ck_assert_msg(ctl && *ctl, "$KVDRIVECTL is not set (run the tests with meson test)");
        ck_assert_int_eq(kvd_test_run_capture(argv, 20000, &out, &st), 0);
        ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvdrivectl stats: status 0x%x", (unsigned)st);
        return out;
}

static char *read_doc(void)
{
        FILE *fp = fopen(KVD_SOURCE_ROOT "/docs/stats-json.md", "r");
        char *doc;
        long n;

        ck_assert_ptr_nonnull(fp);
        ck_assert_int_eq(fseek(fp, 0, SEEK_END), 0);
        n = ftell(fp);
        ck_assert_int_gt(n, 0);
        rewind(fp);
        doc = calloc(1, (size_t)n + 1);
        ck_assert_ptr_nonnull(doc);
        ck_assert_uint_eq(fread(doc, 1, (size_t)n, fp), (size_t)n);
        fclose(fp);
        return doc;
}

/* Every key of obj is a row of the doc's tables: "| `PREFIXkey` |". */
static void assert_documented(const char *doc, json_t *obj, const char *prefix)
{
        const char *key;
        json_t *v;

        json_object_foreach(obj, key, v) {
                char row[128];

                snprintf(row, sizeof(row), "| `%s%s` |", prefix, key);
                ck_assert_msg(strstr(doc, row), "docs/stats-json.md has no row %s", row);
                ck_assert_msg(!json_is_real(v), "remote key %s%s is not an integer", prefix, key);
        }
}

START_TEST(test_kvdrivectl_remote)
{
        struct fake f;
        json_error_t jerr;
        json_t *root, *r, *nodes, *n0, *n1;
        char *out, *doc;

        fake_start(&f, true, NULL);
        out = run_ctl(&f, true);
        root = json_loads(out, 0, &jerr);
        ck_assert_msg(root, "stats --json is not JSON (line %d: %s): %s", jerr.line, jerr.text, out);
        r = json_object_get(root, "remote");
        ck_assert_msg(json_is_object(r), "no remote object: %s", out);
        ck_assert_str_eq(json_string_value(json_object_get(r, "seeds")), "10.0.0.5:7000,10.0.0.6:7000");
        ck_assert_str_eq(json_string_value(json_object_get(r, "condition")), "ok");
        ck_assert_int_eq(json_integer_value(json_object_get(r, "write_skips")), 3);
        ck_assert_int_eq(json_integer_value(json_object_get(r, "inflight")), 4);
        nodes = json_object_get(r, "nodes");
        ck_assert_msg(json_is_array(nodes) && json_array_size(nodes) == N_NODES, "remote.nodes: %s", out);
        n0 = json_array_get(nodes, 0);
        n1 = json_array_get(nodes, 1);
        ck_assert_str_eq(json_string_value(json_object_get(n0, "addr")), "10.0.0.5:7000");
        ck_assert(json_is_true(json_object_get(n0, "up")));
        ck_assert(json_is_false(json_object_get(n1, "up")));
        /* 1000 us over the 3 answers of its histogram, whole us; none: 0. */
        ck_assert(json_is_integer(json_object_get(n0, "latency_us_mean")));
        ck_assert_int_eq(json_integer_value(json_object_get(n0, "latency_us_mean")), 333);
        ck_assert_int_eq(json_integer_value(json_object_get(n1, "latency_us_mean")), 0);
        ck_assert_int_eq(json_array_size(json_object_get(n0, "latency_hist")), KVC_LOOP_BUCKETS);
        ck_assert_int_eq(json_integer_value(json_array_get(json_object_get(n0, "latency_hist"), 8)), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(n1, "ask")), 5);

        doc = read_doc();
        ck_assert_msg(strstr(doc, "| `remote` |"), "docs/stats-json.md does not list remote");
        assert_documented(doc, r, "");
        assert_documented(doc, n0, "nodes[].");
        free(doc);
        json_decref(root);
        free(out);

        out = run_ctl(&f, false);
        ck_assert_msg(strstr(out, "\nremote     seeds 10.0.0.5:7000,10.0.0.6:7000; condition: ok"),
                      "no remote section:\n%s", out);
        ck_assert_msg(strstr(out, "10.0.0.6:7000") && strstr(out, " down "), "no node lines:\n%s", out);
        /* 1.5 MiB read, 32 MiB written, moved/ask, mean and max latency. */
        ck_assert_msg(strstr(out, "1.5       32.0"), "no MiB columns:\n%s", out);
        ck_assert_msg(strstr(out, "3/4      333      600"), "no redirects and latencies:\n%s", out);
        free(out);
        fake_stop(&f);
}
END_TEST

START_TEST(test_kvdrivectl_without_remote)
{
        struct fake f;
        json_t *root;
        char *out;

        fake_start(&f, false, NULL);
        out = run_ctl(&f, true);
        root = json_loads(out, 0, NULL);
        ck_assert_ptr_nonnull(root);
        ck_assert_ptr_null(json_object_get(root, "remote"));
        json_decref(root);
        free(out);
        out = run_ctl(&f, false);
        ck_assert_msg(!strstr(out, "remote"), "a remote section without a remote tier:\n%s", out);
        free(out);
        fake_stop(&f);
}
END_TEST

static Suite *client_suite(void)
{
        Suite *s = suite_create("client");
        TCase *wire = tcase_create("wire");
        TCase *ctl = tcase_create("kvdrivectl");

        tcase_add_test(wire, test_fingerprint_on_the_wire);
        tcase_add_test(wire, test_register_bad_arguments);
        tcase_add_test(wire, test_shared_flags);
        tcase_add_test(wire, test_poll_window);
        tcase_add_test(wire, test_stats_without_remote);
        tcase_add_test(wire, test_stats_remote);
        suite_add_tcase(s, wire);
        tcase_add_test(ctl, test_kvdrivectl_remote);
        tcase_add_test(ctl, test_kvdrivectl_without_remote);
        suite_add_tcase(s, ctl);
        return s;
}

KVD_CHECK_MAIN(client_suite)
