/* SPDX-License-Identifier: MIT */
/*
 * The Redis Cluster client (tiers/rcluster.h) against a real cluster: three
 * masters on loopback, started by the suite in a temporary directory, one
 * cluster per test case (the ones that move slots, kill or stop nodes get
 * their own). Key slots against the spec and redis-cli; values of 1 B to
 * 8 MiB through two iovs; pipelining; MOVED and ASK; a killed node and a
 * stopped one. Skips (77) where redis-server is not installed.
 *
 * The driver loop is the one a user writes: poll(kvd_rc_fd, kvd_rc_timeout_ms),
 * then kvd_rc_run, until what it waits for has ended or a deadline passes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "macro.h"
#include "rcluster.h"
#include "rcluster-cluster.h"

#include <check.h>
#include <hiredis/hiredis.h>

/* Completion later than a deadline by this much is a failure (slow CI, sanitizers). */
#define SLACK_MS 250

/* ---- the client's user ------------------------------------------------ */

struct op {
        struct kvd_rc_req r;
        unsigned *left;
        int calls;
        uint64_t done_ns;
};

static void op_done(struct kvd_rc_req *r)
{
        struct op *o = container_of(r, struct op, r);

        o->calls++;
        o->done_ns = kvd_now_ns();
        if (o->left)
                (*o->left)--;
}

static void op_init(struct op *o, enum kvd_rc_op op, const char *key, unsigned *left)
{
        *o = (struct op){ .left = left };
        o->r.op = op;
        o->r.keylen = (uint32_t)strlen(key);
        memcpy(o->r.key, key, o->r.keylen);
        o->r.done = op_done;
}

/* The caller's loop: until *left is 0 (true) or ms pass (false). */
static bool drive(struct kvd_rc *rc, const unsigned *left, unsigned ms)
{
        uint64_t end = kvd_now_ns() + ms * MSEC;

        while (*left > 0) {
                struct pollfd p = { .fd = kvd_rc_fd(rc), .events = POLLIN };
                uint64_t now = kvd_now_ns();
                int t = kvd_rc_timeout_ms(rc), rest;

                if (now >= end)
                        return false;
                rest = (int)((end - now + MSEC - 1) / MSEC);
                if (t < 0 || t > rest)
                        t = rest;
                poll(&p, 1, t);
                kvd_rc_run(rc);
        }
        return true;
}

/* o submitted and waited for; its result. */
static int run1(struct kvd_rc *rc, struct op *o, unsigned ms)
{
        unsigned left = 1;

        o->left = &left;
        kvd_rc_submit(rc, &o->r);
        ck_assert_msg(drive(rc, &left, ms), "a request did not end within %u ms", ms);
        ck_assert_int_eq(o->calls, 1);
        o->left = NULL;
        return o->r.result;
}

static int do_set(struct kvd_rc *rc, const char *key, const void *v, size_t len, size_t split, uint64_t ttl_ms)
{
        struct op o;

        op_init(&o, KVD_RC_SET, key, NULL);
        o.r.iov[0] = (struct iovec){ (void *)v, MIN(split, len) };
        o.r.iov[1] = (struct iovec){ (char *)v + MIN(split, len), len - MIN(split, len) };
        o.r.n_iov = 2;
        o.r.ttl_ms = ttl_ms;
        o.r.deadline_ns = kvd_now_ns() + 10000 * MSEC;
        return run1(rc, &o, 15000);
}

static int do_get(struct kvd_rc *rc, const char *key, void *a, size_t alen, void *b, size_t blen, uint32_t *ret_len)
{
        struct op o;
        int r;

        op_init(&o, KVD_RC_GET, key, NULL);
        o.r.iov[0] = (struct iovec){ a, alen };
        o.r.iov[1] = (struct iovec){ b, blen };
        o.r.n_iov = 2;
        o.r.deadline_ns = kvd_now_ns() + 10000 * MSEC;
        r = run1(rc, &o, 15000);
        if (ret_len)
                *ret_len = o.r.value_len;
        return r;
}

static int do_exists(struct kvd_rc *rc, const char *key)
{
        struct op o;

        op_init(&o, KVD_RC_EXISTS, key, NULL);
        return run1(rc, &o, 5000);
}

/* A GET for a small value, answered by which node. */
static int get_small(struct kvd_rc *rc, const char *key, char *buf, size_t len, int *ret_node)
{
        struct op o;
        int r;

        op_init(&o, KVD_RC_GET, key, NULL);
        o.r.iov[0] = (struct iovec){ buf, len };
        o.r.n_iov = 1;
        r = run1(rc, &o, 5000);
        if (ret_node)
                *ret_node = o.r.node;
        return r;
}

static struct kvd_rc *client(int n_seeds)
{
        char seeds[256];
        size_t len = 0;
        struct kvd_rc_config cfg = { .seeds = seeds };
        struct kvd_rc *rc = NULL;

        ck_assert_msg(cl.ok, "the test cluster did not start");
        for (int i = 0; i < n_seeds; i++)
                len += (size_t)snprintf(seeds + len, sizeof(seeds) - len, "%s127.0.0.1:%d", i ? "," : "",
                                        cl.port[i]);
        ck_assert_int_eq(kvd_rc_new(&cfg, &rc), 0);
        return rc;
}

static int node_of_port(const struct kvd_rc *rc, int port)
{
        char want[32];

        snprintf(want, sizeof(want), "127.0.0.1:%d", port);
        for (unsigned i = 0; i < kvd_rc_node_count(rc); i++) {
                struct kvd_rc_node_stats s;

                kvd_rc_node_stats(rc, i, &s);
                if (strcmp(s.addr, want) == 0)
                        return (int)i;
        }
        return -1;
}

/* The cluster node (0..NODES) behind client node index i. */
static int cluster_node(const struct kvd_rc *rc, int i)
{
        for (int k = 0; k < NODES; k++)
                if (node_of_port(rc, cl.port[k]) == i)
                        return k;
        return -1;
}

static struct kvd_rc_node_stats stats(const struct kvd_rc *rc, int i)
{
        struct kvd_rc_node_stats s;

        kvd_rc_node_stats(rc, (unsigned)i, &s);
        return s;
}

static void fill(void *p, size_t n, uint64_t seed)
{
        uint8_t *b = p;
        uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b[i] = (uint8_t)x;
        }
}

/* For each cluster node, a key it owns (via the client's answers). */
static void key_per_node(struct kvd_rc *rc, char keys[NODES][32])
{
        bool have[NODES] = { false };
        int found = 0;

        for (int k = 0; k < 1000 && found < NODES; k++) {
                char key[32], v[8] = "v";
                int node, c;

                snprintf(key, sizeof(key), "pernode-%d", k);
                ck_assert_int_eq(do_set(rc, key, v, 1, 1, 0), 0);
                ck_assert_int_eq(get_small(rc, key, v, 1, &node), 0);
                c = cluster_node(rc, node);
                ck_assert_int_ge(c, 0);
                if (!have[c]) {
                        have[c] = true;
                        snprintf(keys[c], sizeof(keys[c]), "%s", key);
                        found++;
                }
        }
        ck_assert_int_eq(found, NODES);
}

/* ---- the tests -------------------------------------------------------- */

static unsigned slot_of(const char *k)
{
        return kvd_rc_key_slot(k, strlen(k));
}

static unsigned cli_keyslot(const char *k)
{
        char out[64];

        ck_assert_int_eq(cli(out, sizeof(out), cl.port[0], "cluster", "keyslot", k, NULL), 0);
        return (unsigned)strtoul(out, NULL, 10);
}

START_TEST(key_slots)
{
        static const char *const edge[] = {
                "", "{", "}", "{}", "}{", "{{}}", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "a{b", "a}b{c}",
                "{user1000}.following", "{user1000}.followers", "user1000", "123456789",
        };
        uint64_t x = 42;
        char key[40];

        ck_assert_msg(cl.ok, "the test cluster did not start");
        /* The spec's test vector: CRC16-XMODEM("123456789") = 0x31C3 (< 16384). */
        ck_assert_uint_eq(slot_of("123456789"), 0x31C3);
        ck_assert_uint_eq(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
        ck_assert_uint_eq(slot_of("{user1000}.following"), slot_of("user1000"));
        ck_assert_uint_eq(slot_of("foo{bar}{zap}"), slot_of("bar"));
        ck_assert_uint_eq(slot_of("foo{{bar}}zap"), slot_of("{bar"));
        /* An empty tag, or none closed: the whole key. */
        ck_assert_uint_ne(slot_of("foo{}{bar}"), slot_of("bar"));
        ck_assert_uint_eq(kvd_rc_key_slot("x{}", 3), kvd_rc_key_slot("x{}y", 3));
        ck_assert_uint_eq(slot_of(""), 0);
        for (unsigned i = 0; i < ARRAY_SIZE(edge); i++)
                ck_assert_msg(slot_of(edge[i]) == cli_keyslot(edge[i]), "slot of \"%s\": %u, redis says %u", edge[i],
                              slot_of(edge[i]), cli_keyslot(edge[i]));
        for (int i = 0; i < 20; i++) {
                static const char cs[] = "abcdefghijklmnopqrstuvwxyz0123456789:._{}";
                int len;

                fill(&x, sizeof(x), x);
                len = 1 + (int)(x % 30);
                for (int k = 0; k < len; k++) {
                        fill(&x, sizeof(x), x);
                        key[k] = cs[x % (sizeof(cs) - 1)];
                }
                key[len] = '\0';
                ck_assert_msg(slot_of(key) == cli_keyslot(key), "slot of \"%s\": %u, redis says %u", key,
                              slot_of(key), cli_keyslot(key));
        }
}
END_TEST

START_TEST(seed_lists)
{
        struct kvd_rc_config cfg = { 0 };
        struct kvd_rc *rc = NULL;
        char why[256];

        ck_assert_int_eq(kvd_rc_parse_seeds("127.0.0.1:7000", why, sizeof(why)), 1);
        ck_assert_int_eq(kvd_rc_parse_seeds("redis-cluster://a:1, b:2,[::1]:3", why, sizeof(why)), 3);
        ck_assert_int_eq(kvd_rc_parse_seeds("host", why, sizeof(why)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "\"host\""));
        ck_assert_int_eq(kvd_rc_parse_seeds("a:1,,b:2", why, sizeof(why)), -EINVAL);
        ck_assert_int_eq(kvd_rc_parse_seeds("a:0", why, sizeof(why)), -EINVAL);
        ck_assert_int_eq(kvd_rc_parse_seeds("a:65536", why, sizeof(why)), -EINVAL);
        ck_assert_int_eq(kvd_rc_parse_seeds(":80", why, sizeof(why)), -EINVAL);
        ck_assert_int_eq(kvd_rc_parse_seeds("", why, sizeof(why)), -EINVAL);
        ck_assert_int_eq(kvd_rc_parse_seeds(NULL, why, sizeof(why)), -EINVAL);
        cfg.seeds = "a:1:x";
        ck_assert_int_eq(kvd_rc_new(&cfg, &rc), -EINVAL);
        ck_assert_ptr_null(rc);
        ck_assert_ptr_null(kvd_rc_free(NULL));
}
END_TEST

/* Nothing listens at the seed: requests wait for the map, then time out by
 * their deadlines; the refused seed is down. */
START_TEST(no_cluster)
{
        struct kvd_rc_config cfg = { .seeds = "127.0.0.1:1", .timeout_ms = 300 };
        struct kvd_rc *rc = NULL;
        struct op o[4];
        unsigned left = ARRAY_SIZE(o);
        uint64_t t0 = kvd_now_ns();

        ck_assert_int_eq(kvd_rc_new(&cfg, &rc), 0);
        for (unsigned i = 0; i < ARRAY_SIZE(o); i++) {
                op_init(&o[i], KVD_RC_EXISTS, "k", &left);
                kvd_rc_submit(rc, &o[i].r);
        }
        ck_assert(drive(rc, &left, 5000));
        for (unsigned i = 0; i < ARRAY_SIZE(o); i++) {
                ck_assert_int_eq(o[i].r.result, -ETIMEDOUT);
                ck_assert_uint_le(o[i].done_ns, o[i].r.deadline_ns + SLACK_MS * MSEC);
        }
        ck_assert_uint_ge(kvd_now_ns() - t0, 300 * MSEC);
        ck_assert(!stats(rc, 0).up);
        ck_assert_uint_eq(kvd_rc_slot_map_refreshes(rc), 0);
        kvd_rc_free(rc);
}
END_TEST

/* ---- a fake node -------------------------------------------------------- */

/* A node on loopback, in this process, for replies a real cluster does not
 * give on demand: CLUSTER SLOTS says it holds every slot, GET is MOVED to
 * itself (forever), anything else is -CLUSTERDOWN. */
struct fake {
        int lfd, cfd, port;
        redisReader *rd;
        unsigned commands;
};

static void fake_start(struct fake *f)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(a);

        *f = (struct fake){ .cfd = -1 };
        f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(f->lfd, 0);
        ck_assert_int_eq(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
        ck_assert_int_eq(listen(f->lfd, 4), 0);
        ck_assert_int_eq(getsockname(f->lfd, (struct sockaddr *)&a, &len), 0);
        f->port = ntohs(a.sin_port);
}

static void fake_stop(struct fake *f)
{
        if (f->cfd >= 0)
                close(f->cfd);
        close(f->lfd);
        if (f->rd)
                redisReaderFree(f->rd);
}

static void fake_say(struct fake *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fake_say(struct fake *f, const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        ck_assert_int_eq(write(f->cfd, buf, (size_t)n), n);
}

static void fake_step(struct fake *f)
{
        char buf[4096];
        ssize_t n;
        void *p;

        if (f->cfd < 0) {
                f->cfd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
                if (f->cfd < 0)
                        return;
                f->rd = redisReaderCreate();
        }
        n = recv(f->cfd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n <= 0)
                return;
        ck_assert_int_eq(redisReaderFeed(f->rd, buf, (size_t)n), REDIS_OK);
        while (redisReaderGetReply(f->rd, &p) == REDIS_OK && p) {
                redisReply *c = p;

                ck_assert_int_eq(c->type, REDIS_REPLY_ARRAY);
                f->commands++;
                if (c->elements == 2 && strcasecmp(c->element[0]->str, "CLUSTER") == 0)
                        fake_say(f, "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$4\r\nfake\r\n",
                                 f->port);
                else if (c->elements == 2 && strcasecmp(c->element[0]->str, "GET") == 0)
                        fake_say(f, "-MOVED %u 127.0.0.1:%d\r\n",
                                 kvd_rc_key_slot(c->element[1]->str, c->element[1]->len), f->port);
                else
                        fake_say(f, "-CLUSTERDOWN The cluster is down\r\n");
                freeReplyObject(c);
        }
}

/* drive() with the fake node served between the client's turns. */
static bool drive_fake(struct kvd_rc *rc, struct fake *f, const unsigned *left, unsigned ms)
{
        uint64_t end = kvd_now_ns() + ms * MSEC;

        while (*left > 0) {
                struct pollfd p[3] = { { .fd = kvd_rc_fd(rc), .events = POLLIN }, { .fd = f->lfd, .events = POLLIN },
                                       { .fd = f->cfd, .events = POLLIN } };
                int t = kvd_rc_timeout_ms(rc);

                if (kvd_now_ns() >= end)
                        return false;
                if (t < 0 || t > 50)
                        t = 50;
                poll(p, 3, t);
                fake_step(f);
                kvd_rc_run(rc);
        }
        return true;
}

/* MOVED forever: followed max_redirects times, then -EIO; error replies: -EIO, counted. */
START_TEST(redirect_limit)
{
        struct kvd_rc_config cfg = { .max_redirects = 3 };
        struct kvd_rc *rc = NULL;
        struct kvd_rc_node_stats st;
        struct fake f;
        struct op o[2];
        unsigned left = 2;
        char seeds[32], v[4];

        fake_start(&f);
        snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f.port);
        cfg.seeds = seeds;
        ck_assert_int_eq(kvd_rc_new(&cfg, &rc), 0);
        op_init(&o[0], KVD_RC_GET, "loop", &left);
        o[0].r.iov[0] = (struct iovec){ v, sizeof(v) };
        o[0].r.n_iov = 1;
        op_init(&o[1], KVD_RC_EXISTS, "down", &left);
        kvd_rc_submit(rc, &o[0].r);
        kvd_rc_submit(rc, &o[1].r);
        ck_assert(drive_fake(rc, &f, &left, 5000));
        ck_assert_int_eq(o[0].r.result, -EIO);
        ck_assert_uint_eq(o[0].r.redirects, 3);
        ck_assert_int_eq(o[0].r.node, 0);
        ck_assert_int_eq(o[1].r.result, -EIO);
        ck_assert_uint_eq(kvd_rc_node_count(rc), 1);
        kvd_rc_node_stats(rc, 0, &st);
        ck_assert(st.up);
        ck_assert_uint_eq(st.slots, KVD_RC_SLOTS);
        ck_assert_uint_eq(st.moved, 4);
        ck_assert_uint_eq(st.errors, 2);
        ck_assert_uint_eq(st.requests, 5);
        ck_assert_uint_eq(f.commands, 6);       /* and CLUSTER SLOTS */
        kvd_rc_free(rc);
        fake_stop(&f);
}
END_TEST

START_TEST(set_get)
{
        static const size_t sizes[] = { 1, 4096, 1u << 20, 8u << 20 };
        struct kvd_rc *rc = client(NODES);
        uint64_t hits = 0, misses = 0, rbytes = 0, wbytes = 0;
        uint32_t vlen;
        char key[32];

        for (unsigned i = 0; i < ARRAY_SIZE(sizes); i++) {
                size_t n = sizes[i], head = MIN(n, (size_t)256);
                uint8_t *v = malloc(n), *a = malloc(head), *b = malloc(n - head + 1);

                ck_assert(v && a && b);
                fill(v, n, i + 1);
                snprintf(key, sizeof(key), "value-%zu", n);
                ck_assert_int_eq(do_set(rc, key, v, n, 256, 0), 0);
                memset(a, 0, head);
                memset(b, 0, n - head + 1);
                ck_assert_int_eq(do_get(rc, key, a, head, b, n - head, &vlen), 0);
                ck_assert_uint_eq(vlen, n);
                ck_assert(memcmp(a, v, head) == 0);
                ck_assert(memcmp(b, v + head, n - head) == 0);
                /* A total length one off: -EMSGSIZE, the buffers untouched. */
                memset(a, 0xaa, head);
                memset(b, 0xaa, n - head + 1);
                ck_assert_int_eq(do_get(rc, key, a, head, b, n - head + 1, &vlen), -EMSGSIZE);
                ck_assert_uint_eq(vlen, n);
                for (size_t k = 0; k < head; k++)
                        ck_assert_uint_eq(a[k], 0xaa);
                for (size_t k = 0; k < n - head + 1; k++)
                        ck_assert_uint_eq(b[k], 0xaa);
                free(v);
                free(a);
                free(b);
        }
        ck_assert_int_eq(do_get(rc, "no-such-key", key, 1, NULL, 0, NULL), -ENOENT);
        ck_assert_int_eq(do_exists(rc, "value-1"), 0);
        ck_assert_int_eq(do_exists(rc, "no-such-key"), -ENOENT);
        /* TTL: gone some time after 300 ms (waited for, not timed). */
        ck_assert_int_eq(do_set(rc, "ttl-key", "x", 1, 1, 300), 0);
        {
                uint64_t end = kvd_now_ns() + 10000 * MSEC;
                int r;

                while ((r = do_exists(rc, "ttl-key")) == 0 && kvd_now_ns() < end)
                        usleep(50000);
                ck_assert_int_eq(r, -ENOENT);
        }
        for (unsigned i = 0; i < kvd_rc_node_count(rc); i++) {
                struct kvd_rc_node_stats s = stats(rc, (int)i);

                ck_assert(s.up);
                hits += s.hits;
                misses += s.misses;
                rbytes += s.read_bytes;
                wbytes += s.write_bytes;
        }
        ck_assert_uint_ge(hits, 2 * ARRAY_SIZE(sizes) + 1);
        ck_assert_uint_ge(misses, 3);
        ck_assert_uint_ge(wbytes, (1u + 4096 + (1u << 20) + (8u << 20)) + 1);
        ck_assert_uint_ge(rbytes, 2 * (1u + 4096 + (1u << 20) + (8u << 20)));
        ck_assert_uint_ge(kvd_rc_slot_map_refreshes(rc), 1);
        kvd_rc_free(rc);
}
END_TEST

#define PIPELINED 2000

START_TEST(pipelining)
{
        struct kvd_rc *rc = client(NODES);
        struct op *o = calloc(PIPELINED, sizeof(*o));
        uint64_t (*val)[8] = calloc(PIPELINED, sizeof(*val));
        unsigned left = PIPELINED, used = 0;
        char key[32];

        ck_assert(o && val);
        for (int i = 0; i < PIPELINED; i++) {
                snprintf(key, sizeof(key), "pipe-%d", i);
                fill(val[i], sizeof(val[i]), (uint64_t)i);
                op_init(&o[i], KVD_RC_SET, key, &left);
                o[i].r.iov[0] = (struct iovec){ val[i], sizeof(val[i]) };
                o[i].r.n_iov = 1;
                o[i].r.deadline_ns = kvd_now_ns() + 10000 * MSEC;
                kvd_rc_submit(rc, &o[i].r);
        }
        ck_assert(drive(rc, &left, 15000));
        for (int i = 0; i < PIPELINED; i++)
                ck_assert_int_eq(o[i].r.result, 0);
        left = PIPELINED;
        for (int i = 0; i < PIPELINED; i++) {
                snprintf(key, sizeof(key), "pipe-%d", i);
                op_init(&o[i], KVD_RC_GET, key, &left);
                o[i].r.iov[0] = (struct iovec){ val[i], sizeof(val[i]) };
                o[i].r.n_iov = 1;
                o[i].r.deadline_ns = kvd_now_ns() + 10000 * MSEC;
        }
        /* Into zeroed buffers, so that the values come from the cluster. */
        memset(val, 0, PIPELINED * sizeof(*val));
        for (int i = 0; i < PIPELINED; i++)
                kvd_rc_submit(rc, &o[i].r);
        ck_assert(drive(rc, &left, 15000));
        for (int i = 0; i < PIPELINED; i++) {
                uint64_t want[8];

                fill(want, sizeof(want), (uint64_t)i);
                ck_assert_int_eq(o[i].calls, 1);
                ck_assert_int_eq(o[i].r.result, 0);
                ck_assert(memcmp(val[i], want, sizeof(want)) == 0);
        }
        for (unsigned i = 0; i < kvd_rc_node_count(rc); i++)
                used += stats(rc, (int)i).requests > 0;
        ck_assert_uint_eq(used, NODES);
        free(o);
        free(val);
        kvd_rc_free(rc);
}
END_TEST

/* Freed with requests in flight, queued and not yet routed: each callback
 * runs once, with -ECANCELED or the result it had already. */
START_TEST(free_in_flight)
{
        enum { N = 300 };
        struct kvd_rc *rc = client(NODES);
        struct op *o = calloc(N, sizeof(*o));
        static uint8_t big[64 << 10];
        unsigned left = N, cancelled = 0;
        char key[32];

        ck_assert_ptr_nonnull(o);
        ck_assert_int_eq(do_set(rc, "warm", "w", 1, 1, 0), 0);  /* the map is there */
        for (int i = 0; i < N; i++) {
                snprintf(key, sizeof(key), "free-%d", i);
                op_init(&o[i], i % 2 ? KVD_RC_GET : KVD_RC_SET, key, &left);
                o[i].r.iov[0] = (struct iovec){ big, sizeof(big) };
                o[i].r.n_iov = 1;
                kvd_rc_submit(rc, &o[i].r);
                if (i == N / 2)
                        kvd_rc_run(rc); /* half of them sent (or partly) */
        }
        kvd_rc_free(rc);
        ck_assert_uint_eq(left, 0);
        for (int i = 0; i < N; i++) {
                int r = o[i].r.result;

                ck_assert_int_eq(o[i].calls, 1);
                ck_assert_msg(r == -ECANCELED || r == 0 || r == -ENOENT || r == -EMSGSIZE, "result %d", r);
                cancelled += r == -ECANCELED;
        }
        ck_assert_uint_ge(cancelled, N / 2 - 1);
        free(o);
}
END_TEST

/* The cluster node owning key k, via node k-th's answer to GET. */
static int owner_of(struct kvd_rc *rc, const char *key)
{
        char v[64];
        int node;

        ck_assert_int_eq(get_small(rc, key, v, 1, &node), 0);
        return cluster_node(rc, node);
}

static void setslot(int node, unsigned slot, const char *how, int other)
{
        char out[256], s[16];

        snprintf(s, sizeof(s), "%u", slot);
        ck_assert_int_eq(cli(out, sizeof(out), cl.port[node], "cluster", "setslot", s, how, cl.id[other], NULL), 0);
        ck_assert_msg(strncmp(out, "OK", 2) == 0, "CLUSTER SETSLOT %s %s on %d: %s", s, how, node, out);
}

static void migrate(int from, int to, const char *key)
{
        char out[256], port[16];

        snprintf(port, sizeof(port), "%d", cl.port[to]);
        ck_assert_int_eq(cli(out, sizeof(out), cl.port[from], "migrate", "127.0.0.1", port, key, "0", "5000", NULL), 0);
        ck_assert_msg(strncmp(out, "OK", 2) == 0, "MIGRATE: %s", out);
}

/* One seed: the map still has the three masters. A slot moved by hand (the
 * documented resharding steps) answers MOVED, then the map is refreshed; a
 * slot left half-migrated answers ASK. */
START_TEST(moved_and_ask)
{
        struct kvd_rc *rc = client(1);
        unsigned slot, slots_before, total = 0;
        int src, dst, other, node;
        uint64_t refreshes, end;
        char v[8];

        ck_assert_int_eq(do_set(rc, "moved-key", "m", 1, 1, 0), 0);
        ck_assert_uint_eq(kvd_rc_node_count(rc), NODES);
        for (int i = 0; i < NODES; i++) {
                ck_assert_int_ge(node_of_port(rc, cl.port[i]), 0);
                total += stats(rc, node_of_port(rc, cl.port[i])).slots;
        }
        ck_assert_uint_eq(total, KVD_RC_SLOTS);

        /* MOVED */
        slot = slot_of("moved-key");
        src = owner_of(rc, "moved-key");
        dst = (src + 1) % NODES;
        other = (src + 2) % NODES;
        slots_before = stats(rc, node_of_port(rc, cl.port[dst])).slots;
        setslot(dst, slot, "importing", src);
        setslot(src, slot, "migrating", dst);
        migrate(src, dst, "moved-key");
        setslot(dst, slot, "node", dst);
        setslot(src, slot, "node", dst);
        setslot(other, slot, "node", dst);
        refreshes = kvd_rc_slot_map_refreshes(rc);
        ck_assert_int_eq(get_small(rc, "moved-key", v, 1, &node), 0);
        ck_assert_int_eq(v[0], 'm');
        ck_assert_int_eq(cluster_node(rc, node), dst);
        ck_assert_uint_ge(stats(rc, node_of_port(rc, cl.port[src])).moved, 1);
        /* The MOVED updated the slot at once; a full refresh follows (within ~1 s). */
        ck_assert_uint_eq(stats(rc, node_of_port(rc, cl.port[dst])).slots, slots_before + 1);
        end = kvd_now_ns() + 5000 * MSEC;
        while (kvd_rc_slot_map_refreshes(rc) == refreshes && kvd_now_ns() < end) {
                unsigned none = 1;

                drive(rc, &none, 50);
        }
        ck_assert_uint_gt(kvd_rc_slot_map_refreshes(rc), refreshes);
        ck_assert_uint_eq(stats(rc, node_of_port(rc, cl.port[dst])).slots, slots_before + 1);
        ck_assert_int_eq(get_small(rc, "moved-key", v, 1, &node), 0);
        ck_assert_int_eq(cluster_node(rc, node), dst);

        /* ASK: the slot half-migrated, the key on the target already. */
        {
                char key[32];
                int asrc, adst;
                uint64_t ask_before;

                for (int i = 0;; i++) {
                        snprintf(key, sizeof(key), "ask-key-%d", i);
                        if (slot_of(key) != slot)
                                break;
                }
                ck_assert_int_eq(do_set(rc, key, "a", 1, 1, 0), 0);
                slot = slot_of(key);
                asrc = owner_of(rc, key);
                adst = (asrc + 1) % NODES;
                ask_before = stats(rc, node_of_port(rc, cl.port[asrc])).ask;
                setslot(adst, slot, "importing", asrc);
                setslot(asrc, slot, "migrating", adst);
                migrate(asrc, adst, key);
                v[0] = 0;
                ck_assert_int_eq(get_small(rc, key, v, 1, &node), 0);
                ck_assert_int_eq(v[0], 'a');
                ck_assert_int_eq(cluster_node(rc, node), adst);
                ck_assert_uint_eq(stats(rc, node_of_port(rc, cl.port[asrc])).ask, ask_before + 1);
                /* ASK changes no map: the slot is still the source's. */
                ck_assert_int_eq(owner_of(rc, key), adst); /* (answered via ASK again) */
                ck_assert_uint_eq(stats(rc, node_of_port(rc, cl.port[asrc])).ask, ask_before + 2);
        }
        kvd_rc_free(rc);
}
END_TEST

/* Requests for the key of each node; those for node `victim` must fail
 * (within their deadlines) when bad, the others succeed. */
static void round_robin(struct kvd_rc *rc, char keys[NODES][32], int victim, bool victim_ok)
{
        struct op o[NODES];
        unsigned left = NODES;
        char v[NODES][8];

        for (int i = 0; i < NODES; i++) {
                op_init(&o[i], KVD_RC_GET, keys[i], &left);
                o[i].r.iov[0] = (struct iovec){ v[i], 1 };
                o[i].r.n_iov = 1;
                o[i].r.deadline_ns = kvd_now_ns() + 400 * MSEC;
                kvd_rc_submit(rc, &o[i].r);
        }
        ck_assert(drive(rc, &left, 5000));
        for (int i = 0; i < NODES; i++) {
                int r = o[i].r.result;

                ck_assert_uint_le(o[i].done_ns, o[i].r.deadline_ns + SLACK_MS * MSEC);
                if (i != victim || victim_ok) {
                        ck_assert_msg(r == 0, "node %d: %d", i, r);
                        continue;
                }
                ck_assert_msg(r == -EHOSTDOWN || r == -ECONNRESET || r == -ECONNREFUSED || r == -ETIMEDOUT,
                              "request to the dead node: %d", r);
        }
}

/* A request for a node that is down ends in the next kvd_rc_run, -EHOSTDOWN. */
static void fails_at_once(struct kvd_rc *rc, const char *key)
{
        struct op o;
        char v[8];

        op_init(&o, KVD_RC_GET, key, NULL);
        o.r.iov[0] = (struct iovec){ v, 1 };
        o.r.n_iov = 1;
        kvd_rc_submit(rc, &o.r);
        ck_assert_int_eq(o.calls, 0);
        kvd_rc_run(rc);
        ck_assert_int_eq(o.calls, 1);
        ck_assert_int_eq(o.r.result, -EHOSTDOWN);
}

START_TEST(node_down)
{
        struct kvd_rc *rc = client(NODES);
        char keys[NODES][32];
        int victim = 1, vnode;
        uint64_t end, refreshes;
        bool back = false;

        key_per_node(rc, keys);
        vnode = node_of_port(rc, cl.port[victim]);
        ck_assert(stats(rc, vnode).up);
        refreshes = kvd_rc_slot_map_refreshes(rc);
        ck_assert_int_eq(kill(cl.pid[victim], SIGKILL), 0);
        for (int k = 0; k < 10; k++)
                round_robin(rc, keys, victim, false);
        ck_assert(!stats(rc, vnode).up);
        fails_at_once(rc, keys[victim]);
        /* The map is asked for again, from another node. */
        end = kvd_now_ns() + 5000 * MSEC;
        while (kvd_rc_slot_map_refreshes(rc) == refreshes && kvd_now_ns() < end) {
                unsigned none = 1;

                drive(rc, &none, 50);
        }
        ck_assert_uint_gt(kvd_rc_slot_map_refreshes(rc), refreshes);
        /* Back on its port with its nodes.conf (its data is gone: SET again). */
        spawn_redis(victim);
        end = kvd_now_ns() + 30000 * MSEC;
        while (!back && kvd_now_ns() < end) {
                unsigned none = 1;

                back = do_set(rc, keys[victim], "v", 1, 1, 0) == 0;
                drive(rc, &none, 100);
        }
        ck_assert_msg(back, "the restarted node never worked again");
        ck_assert(stats(rc, vnode).up);
        round_robin(rc, keys, victim, true);
        kvd_rc_free(rc);
}
END_TEST

START_TEST(node_stopped)
{
        struct kvd_rc *rc = client(NODES);
        char keys[NODES][32], v[NODES][8];
        int victim = 2, vnode;
        unsigned left = NODES;
        uint64_t end;
        struct op o[NODES];
        bool back = false;

        key_per_node(rc, keys);
        vnode = node_of_port(rc, cl.port[victim]);
        ck_assert_int_eq(kill(cl.pid[victim], SIGSTOP), 0);
        /* One GET per node at once: the stopped one's times out by its deadline. */
        for (int i = 0; i < NODES; i++) {
                op_init(&o[i], KVD_RC_GET, keys[i], &left);
                o[i].r.iov[0] = (struct iovec){ v[i], 1 };
                o[i].r.n_iov = 1;
                o[i].r.deadline_ns = kvd_now_ns() + 300 * MSEC;
                kvd_rc_submit(rc, &o[i].r);
        }
        ck_assert(drive(rc, &left, 5000));
        for (int i = 0; i < NODES; i++) {
                ck_assert_int_eq(o[i].r.result, i == victim ? -ETIMEDOUT : 0);
                ck_assert_uint_le(o[i].done_ns, o[i].r.deadline_ns + SLACK_MS * MSEC);
        }
        ck_assert_uint_ge(stats(rc, vnode).timeouts, 1);
        ck_assert(!stats(rc, vnode).up);
        fails_at_once(rc, keys[victim]);
        for (int k = 0; k < 5; k++)
                round_robin(rc, keys, victim, false);
        ck_assert_int_eq(kill(cl.pid[victim], SIGCONT), 0);
        end = kvd_now_ns() + 20000 * MSEC;
        while (!back && kvd_now_ns() < end) {
                unsigned none = 1;

                back = get_small(rc, keys[victim], v[0], 1, NULL) == 0;
                drive(rc, &none, 100);
        }
        ck_assert_msg(back, "the stopped node never worked again");
        ck_assert(stats(rc, vnode).up);
        round_robin(rc, keys, victim, true);
        kvd_rc_free(rc);
}
END_TEST

static TCase *with_cluster(const char *name)
{
        TCase *tc = tcase_create(name);

        tcase_add_unchecked_fixture(tc, cluster_start, cluster_stop);
        tcase_set_timeout(tc, 90);
        return tc;
}

static Suite *rcluster_suite(void)
{
        Suite *s = suite_create("rcluster");
        TCase *tc = tcase_create("plain");

        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, seed_lists);
        tcase_add_test(tc, no_cluster);
        tcase_add_test(tc, redirect_limit);
        suite_add_tcase(s, tc);
        tc = with_cluster("cluster");
        tcase_add_test(tc, key_slots);
        tcase_add_test(tc, set_get);
        tcase_add_test(tc, pipelining);
        tcase_add_test(tc, free_in_flight);
        suite_add_tcase(s, tc);
        tc = with_cluster("moved");
        tcase_add_test(tc, moved_and_ask);
        suite_add_tcase(s, tc);
        tc = with_cluster("down");
        tcase_add_test(tc, node_down);
        suite_add_tcase(s, tc);
        tc = with_cluster("stopped");
        tcase_add_test(tc, node_stopped);
        suite_add_tcase(s, tc);
        return s;
}

static bool have(const char *prog)
{
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
        return system(cmd) == 0;
}

int main(void)
{
        SRunner *sr;
        int failed;

        if (!have("redis-server") || !have("redis-cli")) {
                printf("1..0 # SKIP redis-server or redis-cli is not installed\n");
                return 77;
        }
        cluster_init();
        srandom((unsigned)(getpid() ^ time(NULL)));
        signal(SIGPIPE, SIG_IGN);
        sr = srunner_create(rcluster_suite());
        srunner_set_tap(sr, "-");
        srunner_run_all(sr, CK_SILENT);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
