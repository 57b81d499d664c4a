/* SPDX-License-Identifier: MIT */
/*
 * Tenants: a uid that is not allowed can neither see, read, delete nor
 * change another's namespace; the config shares namespaces with readers and
 * writers; admins see and drop everything; quotas per uid push out only the
 * uid's own blocks and refuse pools and namespaces past them. Children
 * switch to unprivileged uids, so the suite needs root (exit 77 otherwise).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "ssd-common.h"

#define NOBODY 65534u           /* an unprivileged uid/gid */
#define WRITER 65532u
#define WRITER_GROUP 65533u
#define STRANGER 65531u
#define ADMIN_GROUP 65530u
#define NS_NAME "tenants-model"
#define SHARED_NAME "shared-model"
#define N 8u

struct t {
        struct kvd_test_daemon d;
        char conf[160];
        uint32_t root_ns;       /* root's namespace id */
};

/* Block i of sequence seed with bytes of salt. */
static void ref_of(uint64_t seed, uint32_t i, uint32_t slot, struct kvc_block_ref *ret)
{
        struct kvc_key seq = { seed, ~seed };

        *ret = (struct kvc_block_ref){ .layer = 0, .slot = slot };
        kvc_key_private(&seq, i, &ret->key);
}

/* Puts blocks [first, first + n) of seed with salt; returns how many were
 * stored OK, or a negative error. status: the last batch's, if not NULL. */
static int put_blocks(kvc_client *c, uint32_t ns, kvc_pool *p, uint64_t seed, uint32_t first, uint32_t n,
                      uint64_t salt, uint8_t *ret_last_status)
{
        uint32_t step = kvc_pool_slot_count(p) < 256 ? kvc_pool_slot_count(p) : 256, ok = 0;

        for (uint32_t b = 0; b < n; b += step) {
                uint32_t m = n - b < step ? n - b : step;
                struct kvc_block_ref refs[256];
                uint8_t st[256];
                int rc;

                for (uint32_t j = 0; j < m; j++) {
                        ref_of(seed, first + b + j, j, &refs[j]);
                        e2e_fill_block(kvc_pool_slot(p, j), E2E_BLOCK_BYTES, &refs[j].key, 0, salt);
                }
                rc = kvc_put(c, ns, p, refs, m, st);
                if (rc < 0)
                        return rc;
                for (uint32_t j = 0; j < m; j++)
                        ok += st[j] == KVC_ITEM_OK;
                if (ret_last_status)
                        *ret_last_status = st[m - 1];
        }
        return (int)ok;
}

struct got {
        uint32_t ok, miss, wrong, other;
};

/* Gets blocks [first, first + n) of seed and compares them with salt's. */
static int get_blocks(kvc_client *c, uint32_t ns, kvc_pool *p, uint64_t seed, uint32_t first, uint32_t n,
                      uint64_t salt, struct got *ret)
{
        uint8_t want[E2E_BLOCK_BYTES];

        *ret = (struct got){ 0 };
        for (uint32_t i = 0; i < n; i++) {
                struct kvc_block_ref ref;
                uint8_t st = 0xff;
                int rc;

                ref_of(seed, first + i, 0, &ref);
                memset(kvc_pool_slot(p, 0), 0, E2E_BLOCK_BYTES);
                rc = kvc_get(c, ns, p, &ref, 1, &st);
                if (rc < 0)
                        return rc;
                e2e_fill_block(want, sizeof(want), &ref.key, 0, salt);
                if (st == KVC_ITEM_MISS)
                        ret->miss++;
                else if (st != KVC_ITEM_OK)
                        ret->other++;
                else if (memcmp(kvc_pool_slot(p, 0), want, sizeof(want)) == 0)
                        ret->ok++;
                else
                        ret->wrong++;
        }
        return 0;
}

struct client {
        kvc_client *c;
        kvc_pool *p;
        uint32_t ns;
        bool created;
};

/* Connects, registers name (the e2e geometry) and a pool of slots. */
static int client_open(const char *sock, const char *name, uint32_t slots, struct client *ret)
{
        struct kvc_stats *s = NULL;
        int rc;

        *ret = (struct client){ 0 };
        rc = kvc_connect(sock, "tenants", &ret->c);
        if (rc < 0)
                return rc;
        rc = kvc_register_namespace(ret->c, name, &e2e_geom, &ret->ns, NULL);
        if (rc == 0)
                rc = kvc_pool_create(ret->c, slots, E2E_BLOCK_BYTES, &ret->p);
        if (rc == 0)
                rc = kvc_stats_get(ret->c, &s);
        if (rc < 0) {
                fprintf(stderr, "client_open(%s): %s (%s)\n", name, kvc_strerror(rc), kvc_last_error(ret->c));
                kvc_disconnect(ret->c);
                return rc;
        }
        /* created: the namespace has no blocks yet and we are its owner. */
        for (uint32_t i = 0; i < s->n_namespaces; i++)
                if (s->namespaces[i].id == ret->ns)
                        ret->created = s->namespaces[i].blocks == 0;
        kvc_stats_free(s);
        return 0;
}

static void client_close(struct client *cl)
{
        kvc_pool_free(cl->p);
        kvc_disconnect(cl->c);
}

static const struct kvc_ns_stats *ns_by_id(const struct kvc_stats *s, uint32_t id)
{
        for (uint32_t i = 0; i < s->n_namespaces; i++)
                if (s->namespaces[i].id == id)
                        return &s->namespaces[i];
        return NULL;
}

/* Starts the daemon so that other uids can reach its socket. */
static void start(struct t *t, const char *conf_text, const char *const *extra)
{
        const char *args[24];
        int n = 0;

        memset(t, 0, sizeof(*t));
        args[n++] = "--socket-mode";
        args[n++] = "0666";
        if (conf_text) {
                snprintf(t->conf, sizeof(t->conf), "/tmp/kvd-tenants-%d.conf", (int)getpid());
                ck_assert_int_eq(e2e_write_file(t->conf, conf_text, strlen(conf_text)), 0);
                args[n++] = "--config";
                args[n++] = t->conf;
        }
        for (; extra && *extra && n < 22; extra++)
                args[n++] = *extra;
        args[n] = NULL;
        ck_assert_msg(kvd_test_daemon_start(&t->d, args) == 0, "daemon start: %s", t->d.error);
        /* The fixture's directory is 0700: let other uids reach the socket. */
        ck_assert_int_eq(chmod(t->d.dir, 0711), 0);
}

static void stop(struct t *t)
{
        if (t->conf[0])
                unlink(t->conf);
        E2E_STOP(&t->d);
}

static void run_as(uid_t uid, gid_t gid, const gid_t *groups, size_t n, int (*fn)(void *), void *arg,
                   const char *what)
{
        pid_t pid = e2e_fork_as(uid, gid, groups, n, fn, arg);

        ck_assert_int_gt(pid, 0);
        E2E_ASSERT_CHILD_OK(pid, what);
}

/* ---- private by default ------------------------------------------------- */

static int stranger_cannot_touch(void *arg)
{
        struct t *t = arg;
        struct client cl;
        struct kvc_stats *s;
        struct kvc_block_ref ref;
        struct kvc_key keys[N];
        struct got g;
        uint8_t st;
        uint32_t prefix[E2E_LAYERS];
        int rc;

        CHILD_ASSERT(client_open(t->d.socket_path, NS_NAME, 16, &cl) == 0, "open");
        /* The same name is another namespace: its own, empty. */
        CHILD_ASSERT(cl.ns != t->root_ns, "joined root's namespace %u", cl.ns);
        CHILD_ASSERT(cl.created, "namespace %u is not a new one", cl.ns);
        CHILD_ASSERT(get_blocks(cl.c, cl.ns, cl.p, 1, 0, N, 0xa, &g) == 0, "get");
        CHILD_ASSERT(g.miss == N && g.ok == 0 && g.wrong == 0, "read root's blocks: ok %u miss %u", g.ok, g.miss);
        /* It sees only its own namespace, and only its own usage. */
        CHILD_ASSERT(kvc_stats_get(cl.c, &s) == 0, "stats");
        CHILD_ASSERT(s->n_namespaces == 1 && s->namespaces[0].id == cl.ns && s->namespaces[0].owner == NOBODY,
                     "sees %u namespaces", s->n_namespaces);
        CHILD_ASSERT(!s->peer_admin && s->peer_uid == NOBODY, "peer %u admin %d", s->peer_uid, s->peer_admin);
        CHILD_ASSERT(s->n_tenants == 1 && s->tenants[0].uid == NOBODY, "sees %u tenants", s->n_tenants);
        kvc_stats_free(s);
        /* Deleting and overwriting the key changes only its namespace. */
        for (uint32_t i = 0; i < N; i++)
                ref_of(1, i, 0, &ref), keys[i] = ref.key;
        rc = kvc_delete(cl.c, cl.ns, keys, N, -1);
        CHILD_ASSERT(rc == 0, "delete: %d", rc);
        CHILD_ASSERT(put_blocks(cl.c, cl.ns, cl.p, 1, 0, N, 0xbad, NULL) == (int)N, "put its own");
        /* Root's namespace id, used directly, is not its to use. */
        ref_of(1, 0, 0, &ref);
        rc = kvc_get(cl.c, t->root_ns, cl.p, &ref, 1, &st);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "get on root's id: %d", rc);
        rc = kvc_put(cl.c, t->root_ns, cl.p, &ref, 1, &st);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "put on root's id: %d", rc);
        rc = kvc_delete(cl.c, t->root_ns, keys, N, -1);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "delete on root's id: %d", rc);
        rc = kvc_lookup(cl.c, t->root_ns, keys, N, prefix, E2E_LAYERS);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "lookup on root's id: %d", rc);
        rc = kvc_drop_namespace(cl.c, t->root_ns, NULL);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "drop root's: %d", rc);
        client_close(&cl);
        return 0;
}

START_TEST(test_private_by_default)
{
        struct t t;
        struct client root;
        struct kvc_stats *s;
        struct got g;

        start(&t, NULL, NULL);
        ck_assert_int_eq(client_open(t.d.socket_path, NS_NAME, 16, &root), 0);
        t.root_ns = root.ns;
        ck_assert_int_eq(put_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, NULL), (int)N);
        run_as(NOBODY, NOBODY, NULL, 0, stranger_cannot_touch, &t, "uid 65534");
        /* Root's blocks are root's bytes still. */
        ck_assert_int_eq(get_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, &g), 0);
        ck_assert_msg(g.ok == N && g.wrong == 0, "root's blocks: ok %u miss %u wrong %u", g.ok, g.miss, g.wrong);
        /* Root administers: it sees both namespaces, each with its owner. */
        ck_assert_int_eq(kvc_stats_get(root.c, &s), 0);
        ck_assert(s->peer_admin);
        ck_assert_uint_eq(s->n_namespaces, 2);
        ck_assert_uint_eq(ns_by_id(s, root.ns)->owner, 0);
        ck_assert_uint_eq(s->namespaces[0].owner + s->namespaces[1].owner, NOBODY);
        kvc_stats_free(s);
        client_close(&root);
        stop(&t);
}
END_TEST

/* ---- shared by the config ----------------------------------------------- */

static const char shared_conf[] =
        "[namespace shared-*]\n"
        "owner = 0\n"
        "readers = 65534\n"
        "writers = @65533\n";

static int reader(void *arg)
{
        struct t *t = arg;
        struct client cl;
        struct kvc_stats *s;
        struct kvc_block_ref ref;
        struct got g;
        uint32_t ns;
        uint8_t st;
        int rc;

        CHILD_ASSERT(client_open(t->d.socket_path, SHARED_NAME, 16, &cl) == 0, "open");
        CHILD_ASSERT(cl.ns == t->root_ns, "joined %u, not root's shared %u", cl.ns, t->root_ns);
        CHILD_ASSERT(get_blocks(cl.c, cl.ns, cl.p, 1, 0, N, 0xa, &g) == 0, "get");
        CHILD_ASSERT(g.ok == N, "reads root's shared blocks: ok %u miss %u wrong %u", g.ok, g.miss, g.wrong);
        ref_of(1, 0, 0, &ref);
        rc = kvc_put(cl.c, cl.ns, cl.p, &ref, 1, &st);
        CHILD_ASSERT(rc == -KVC_E_DENIED, "a reader's put: %d", rc);
        rc = kvc_delete(cl.c, cl.ns, &ref.key, 1, -1);
        CHILD_ASSERT(rc == -KVC_E_DENIED, "a reader's delete: %d", rc);
        rc = kvc_drop_namespace(cl.c, cl.ns, NULL);
        CHILD_ASSERT(rc == -KVC_E_DENIED, "a reader's drop: %d", rc);
        CHILD_ASSERT(kvc_stats_get(cl.c, &s) == 0, "stats");
        CHILD_ASSERT(s->n_namespaces == 1 && s->namespaces[0].rights == KVC_RIGHT_READ &&
                     s->namespaces[0].owner == 0, "sees %u namespaces", s->n_namespaces);
        kvc_stats_free(s);
        /* Readers do not create shared namespaces (nor fix their geometry). */
        rc = kvc_register_namespace(cl.c, "shared-not-yet", &e2e_geom, &ns, NULL);
        CHILD_ASSERT(rc == -KVC_E_NO_NAMESPACE, "a reader created a shared namespace: %d", rc);
        client_close(&cl);
        return 0;
}

static int writer(void *arg)
{
        struct t *t = arg;
        struct client cl;
        struct kvc_block_ref ref;

        CHILD_ASSERT(client_open(t->d.socket_path, SHARED_NAME, 16, &cl) == 0, "open");
        CHILD_ASSERT(cl.ns == t->root_ns, "joined %u, not root's shared %u", cl.ns, t->root_ns);
        CHILD_ASSERT(put_blocks(cl.c, cl.ns, cl.p, 2, 0, N, 0xc, NULL) == (int)N, "a writer's put");
        ref_of(1, 0, 0, &ref);
        CHILD_ASSERT(kvc_delete(cl.c, cl.ns, &ref.key, 1, -1) == 1, "a writer's delete");
        client_close(&cl);
        return 0;
}

static int stranger(void *arg)
{
        struct t *t = arg;
        struct client cl;
        struct got g;

        CHILD_ASSERT(client_open(t->d.socket_path, SHARED_NAME, 16, &cl) == 0, "open");
        CHILD_ASSERT(cl.ns != t->root_ns && cl.created, "a stranger joined the shared namespace");
        CHILD_ASSERT(get_blocks(cl.c, cl.ns, cl.p, 2, 0, N, 0xc, &g) == 0 && g.miss == N, "stranger reads");
        client_close(&cl);
        return 0;
}

START_TEST(test_shared_namespace)
{
        const gid_t wg = WRITER_GROUP;
        struct t t;
        struct client root;
        struct got g;

        start(&t, shared_conf, NULL);
        ck_assert_int_eq(client_open(t.d.socket_path, SHARED_NAME, 16, &root), 0);
        t.root_ns = root.ns;
        ck_assert_int_eq(put_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, NULL), (int)N);
        run_as(NOBODY, NOBODY, NULL, 0, reader, &t, "reader");
        run_as(WRITER, WRITER, &wg, 1, writer, &t, "writer");
        run_as(STRANGER, STRANGER, NULL, 0, stranger, &t, "stranger");
        /* The writer's blocks are in root's namespace; its delete too. */
        ck_assert_int_eq(get_blocks(root.c, root.ns, root.p, 2, 0, N, 0xc, &g), 0);
        ck_assert_uint_eq(g.ok, N);
        ck_assert_int_eq(get_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, &g), 0);
        ck_assert_msg(g.ok == N - 1 && g.miss == 1, "ok %u miss %u", g.ok, g.miss);
        client_close(&root);
        stop(&t);
}
END_TEST

/* ---- admins --------------------------------------------------------------- */

static int admin(void *arg)
{
        struct t *t = arg;
        kvc_client *c;
        struct kvc_stats *s;
        uint64_t deleted = 0;
        int rc;

        CHILD_ASSERT(kvc_connect(t->d.socket_path, "admin", &c) == 0, "connect");
        CHILD_ASSERT(kvc_stats_get(c, &s) == 0, "stats");
        CHILD_ASSERT(s->peer_admin, "not an admin");
        CHILD_ASSERT(ns_by_id(s, t->root_ns) && ns_by_id(s, t->root_ns)->owner == 0, "does not see root's");
        CHILD_ASSERT(s->n_tenants >= 1, "sees no tenant");
        kvc_stats_free(s);
        rc = kvc_drop_namespace(c, t->root_ns, &deleted);
        CHILD_ASSERT(rc == 0 && deleted == N, "drop: %d (%s), %llu deleted", rc, kvc_last_error(c),
                     (unsigned long long)deleted);
        kvc_disconnect(c);
        return 0;
}

static int not_admin(void *arg)
{
        struct t *t = arg;
        kvc_client *c;
        struct kvc_stats *s;

        CHILD_ASSERT(kvc_connect(t->d.socket_path, "not-admin", &c) == 0, "connect");
        CHILD_ASSERT(kvc_stats_get(c, &s) == 0, "stats");
        CHILD_ASSERT(!s->peer_admin && s->n_namespaces == 0, "admin %d, %u namespaces", s->peer_admin,
                     s->n_namespaces);
        kvc_stats_free(s);
        CHILD_ASSERT(kvc_drop_namespace(c, t->root_ns, NULL) == -KVC_E_NO_NAMESPACE, "dropped root's");
        kvc_disconnect(c);
        return 0;
}

START_TEST(test_admin_group)
{
        const gid_t ag = ADMIN_GROUP;
        const char *const extra[] = { "--admin-group", "65530", NULL };
        struct t t;
        struct client root;
        struct kvc_stats *s;
        struct kvc_block_ref ref;
        uint8_t st;

        start(&t, NULL, extra);
        ck_assert_int_eq(client_open(t.d.socket_path, NS_NAME, 16, &root), 0);
        t.root_ns = root.ns;
        ck_assert_int_eq(put_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, NULL), (int)N);
        run_as(NOBODY, NOBODY, NULL, 0, not_admin, &t, "not an admin");
        run_as(NOBODY, NOBODY, &ag, 1, admin, &t, "admin by group");
        /* Dropped under root's feet: its session is told so. */
        ref_of(1, 0, 0, &ref);
        E2E_ASSERT_RC(root.c, kvc_get(root.c, root.ns, root.p, &ref, 1, &st), -KVC_E_NO_NAMESPACE);
        ck_assert_msg(strstr(kvc_last_error(root.c), "dropped"), "%s", kvc_last_error(root.c));
        ck_assert_int_eq(kvc_stats_get(root.c, &s), 0);
        ck_assert_uint_eq(s->tiers[0].blocks, 0);
        kvc_stats_free(s);
        client_close(&root);
        stop(&t);
}
END_TEST

START_TEST(test_kvdrivectl_drop)
{
        struct t t;
        struct client root, other;
        struct kvc_stats *s;
        char *out = NULL;
        int status;

        start(&t, NULL, NULL);
        ck_assert_int_eq(client_open(t.d.socket_path, NS_NAME, 16, &root), 0);
        ck_assert_int_eq(put_blocks(root.c, root.ns, root.p, 1, 0, N, 0xa, NULL), (int)N);
        ck_assert_int_eq(client_open(t.d.socket_path, "tenants-other", 16, &other), 0);
        ck_assert_int_eq(put_blocks(other.c, other.ns, other.p, 1, 0, N, 0xb, NULL), (int)N);
        client_close(&root);
        {
                const char *argv[] = { getenv("KVDRIVECTL"), "--socket", t.d.socket_path, "drop-namespace",
                                       NS_NAME, NULL };

                ck_assert_int_eq(kvd_test_run_capture(argv, 20000, &out, &status), 0);
                ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "kvdrivectl: %s", out);
                ck_assert_msg(strstr(out, "8 blocks deleted"), "%s", out);
                free(out);
        }
        {
                const char *argv[] = { getenv("KVDRIVECTL"), "--socket", t.d.socket_path, "drop-namespace",
                                       "no-such-namespace", NULL };

                ck_assert_int_eq(kvd_test_run_capture(argv, 20000, &out, &status), 0);
                ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1);
                free(out);
        }
        /* The dropped namespace is gone; the other is whole. */
        ck_assert_int_eq(kvc_stats_get(other.c, &s), 0);
        ck_assert_uint_eq(s->n_namespaces, 1);
        ck_assert_str_eq(s->namespaces[0].name, "tenants-other");
        ck_assert_uint_eq(s->namespaces[0].blocks, N);
        kvc_stats_free(s);
        client_close(&other);
        stop(&t);
}
END_TEST

/* ---- quotas ----------------------------------------------------------------- */

static int fill_own_quota(void *arg)
{
        struct t *t = arg;
        struct client cl;
        struct kvc_stats *s;
        struct got g;
        int rc;

        CHILD_ASSERT(client_open(t->d.socket_path, NS_NAME, 256, &cl) == 0, "open");
        /* 3000 blocks of 8 KiB: more than the 16 MiB tier, 24 times its quota. */
        rc = put_blocks(cl.c, cl.ns, cl.p, 7, 0, 3000, 0x7, NULL);
        CHILD_ASSERT(rc == 3000, "put: %d", rc);
        CHILD_ASSERT(kvc_stats_get(cl.c, &s) == 0, "stats");
        CHILD_ASSERT(s->tenants[0].host_bytes <= (1u << 20), "host bytes %llu over its 1 MiB quota",
                     (unsigned long long)s->tenants[0].host_bytes);
        CHILD_ASSERT(s->tenants[0].quota_host_bytes == (1u << 20) && s->tenants[0].quota_evictions >= 3000 - 128,
                     "quota %llu, %llu evictions", (unsigned long long)s->tenants[0].quota_host_bytes,
                     (unsigned long long)s->tenants[0].quota_evictions);
        kvc_stats_free(s);
        /* What it put last is what it keeps. */
        CHILD_ASSERT(get_blocks(cl.c, cl.ns, cl.p, 7, 3000 - 64, 64, 0x7, &g) == 0 && g.ok == 64,
                     "its last 64: ok %u miss %u", g.ok, g.miss);
        client_close(&cl);
        return 0;
}

START_TEST(test_host_quota_evicts_own)
{
        const char *const extra[] = { "--host-bytes", "16M", NULL };
        struct t t;
        struct client root;
        struct got g;

        start(&t, "[quota 65534]\nhost-bytes = 1M\n", extra);
        ck_assert_int_eq(client_open(t.d.socket_path, NS_NAME, 64, &root), 0);
        ck_assert_int_eq(put_blocks(root.c, root.ns, root.p, 1, 0, 64, 0xa, NULL), 64);
        run_as(NOBODY, NOBODY, NULL, 0, fill_own_quota, &t, "uid 65534 filling its quota");
        ck_assert_int_eq(get_blocks(root.c, root.ns, root.p, 1, 0, 64, 0xa, &g), 0);
        ck_assert_msg(g.ok == 64, "root's blocks after another uid filled its quota: ok %u miss %u", g.ok, g.miss);
        client_close(&root);
        stop(&t);
}
END_TEST

static int pool_and_ns_quota(void *arg)
{
        struct t *t = arg;
        kvc_client *a, *b;
        kvc_pool *p1 = NULL, *p2 = NULL;
        uint32_t ns;
        int rc;

        CHILD_ASSERT(kvc_connect(t->d.socket_path, "a", &a) == 0, "connect");
        CHILD_ASSERT(kvc_connect(t->d.socket_path, "b", &b) == 0, "connect");
        rc = kvc_pool_create(a, 256, 8192, &p1); /* 2 MiB */
        CHILD_ASSERT(rc == -KVC_E_QUOTA, "2 MiB pool: %d (%s)", rc, kvc_last_error(a));
        CHILD_ASSERT(strstr(kvc_last_error(a), "quota-pool-bytes"), "message: %s", kvc_last_error(a));
        CHILD_ASSERT(kvc_pool_create(a, 64, 8192, &p1) == 0, "512 KiB pool");
        /* The quota is the uid's, across its connections. */
        rc = kvc_pool_create(b, 75, 8192, &p2);
        CHILD_ASSERT(rc == -KVC_E_QUOTA, "second session's 600 KiB pool: %d", rc);
        kvc_pool_free(p1);
        kvc_disconnect(a);
        /* Given back when the session ends (wait for the daemon to see it). */
        for (int i = 0; i < 500 && (rc = kvc_pool_create(b, 75, 8192, &p2)) == -KVC_E_QUOTA; i++)
                usleep(10000);
        CHILD_ASSERT(rc == 0, "600 KiB pool once the first session ended: %d", rc);
        kvc_pool_free(p2);
        CHILD_ASSERT(kvc_register_namespace(b, "q1", &e2e_geom, &ns, NULL) == 0, "first namespace");
        CHILD_ASSERT(kvc_register_namespace(b, "q2", &e2e_geom, &ns, NULL) == 0, "second namespace");
        rc = kvc_register_namespace(b, "q3", &e2e_geom, &ns, NULL);
        CHILD_ASSERT(rc == -KVC_E_QUOTA && strstr(kvc_last_error(b), "quota-namespaces"), "third: %d (%s)", rc,
                     kvc_last_error(b));
        kvc_disconnect(b);
        return 0;
}

static int block_over_quota(void *arg)
{
        struct t *t = arg;
        struct client cl;
        uint8_t st = 0xff;

        CHILD_ASSERT(client_open(t->d.socket_path, NS_NAME, 4, &cl) == 0, "open");
        CHILD_ASSERT(put_blocks(cl.c, cl.ns, cl.p, 1, 0, 1, 0x1, &st) == 0, "stored past its quota");
        CHILD_ASSERT(st == KVC_ITEM_QUOTA, "status %u", st);
        client_close(&cl);
        return 0;
}

START_TEST(test_pool_namespace_and_item_quota)
{
        struct t t;
        uint32_t ns;
        kvc_client *c;

        start(&t, "[quota 65534]\npool-bytes = 1M\nnamespaces = 2\n[quota 65531]\nhost-bytes = 4K\n", NULL);
        run_as(NOBODY, NOBODY, NULL, 0, pool_and_ns_quota, &t, "pool and namespace quota");
        run_as(STRANGER, STRANGER, NULL, 0, block_over_quota, &t, "block over the quota");
        /* Others are not limited by them. */
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "root", &c), 0);
        ck_assert_int_eq(kvc_register_namespace(c, "q3", &e2e_geom, &ns, NULL), 0);
        kvc_disconnect(c);
        stop(&t);
}
END_TEST

/* ---- connections ----------------------------------------------------------- */

static int many_connections(void *arg)
{
        struct t *t = arg;
        kvc_client *c[3] = { NULL };
        int rc;

        CHILD_ASSERT(kvc_connect(t->d.socket_path, "one", &c[0]) == 0, "first");
        CHILD_ASSERT(kvc_connect(t->d.socket_path, "two", &c[1]) == 0, "second");
        rc = kvc_connect(t->d.socket_path, "three", &c[2]);
        CHILD_ASSERT(rc == -KVC_E_LIMIT || rc == -ECONNRESET || rc == -EPIPE, "third: %d (%s)", rc,
                     kvc_strerror(rc));
        kvc_disconnect(c[0]);
        kvc_disconnect(c[1]);
        return 0;
}

/* One uid cannot take every connection slot: others still connect. */
START_TEST(test_connections_per_uid)
{
        const char *const extra[] = { "--max-clients-per-uid", "2", NULL };
        struct t t;
        kvc_client *a, *b, *c;

        start(&t, NULL, extra);
        run_as(NOBODY, NOBODY, NULL, 0, many_connections, &t, "uid 65534's third connection");
        /* Root is not counted. */
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "a", &a), 0);
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "b", &b), 0);
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "c", &c), 0);
        kvc_disconnect(a);
        kvc_disconnect(b);
        kvc_disconnect(c);
        stop(&t);
}
END_TEST

/* ---- the namespace table ------------------------------------------------ */

START_TEST(test_namespaces_go_away)
{
        const char *const extra[] = { "--max-namespaces", "4", NULL };
        struct t t;
        kvc_client *c, *watch;
        struct client keep;
        struct kvc_stats *s;
        uint32_t ns, last = 0;
        int rc;

        start(&t, NULL, extra);
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "watch", &watch), 0);
        ck_assert_int_eq(kvc_connect(t.d.socket_path, "fill", &c), 0);
        for (int i = 0; i < 4; i++) {
                char name[16];

                snprintf(name, sizeof(name), "ns-%d", i);
                E2E_ASSERT_RC(c, kvc_register_namespace(c, name, &e2e_geom, &ns, NULL), 0);
        }
        rc = kvc_register_namespace(c, "ns-4", &e2e_geom, &ns, NULL);
        ck_assert_int_eq(rc, -KVC_E_LIMIT);
        ck_assert_msg(strstr(kvc_last_error(c), "max-namespaces 4"), "%s", kvc_last_error(c));
        kvc_disconnect(c);
        /* No blocks, no client: they go. */
        ck_assert_int_eq(e2e_wait_clients(watch, 1, 10000, &last), 0);
        ck_assert_int_eq(kvc_stats_get(watch, &s), 0);
        ck_assert_uint_eq(s->n_namespaces, 0);
        kvc_stats_free(s);
        /* One with a block stays after its client left, until dropped. */
        ck_assert_int_eq(client_open(t.d.socket_path, "keep", 4, &keep), 0);
        ck_assert_int_eq(put_blocks(keep.c, keep.ns, keep.p, 1, 0, 1, 0x1, NULL), 1);
        client_close(&keep);
        ck_assert_int_eq(e2e_wait_clients(watch, 1, 10000, &last), 0);
        ck_assert_int_eq(kvc_stats_get(watch, &s), 0);
        ck_assert_uint_eq(s->n_namespaces, 1);
        ns = s->namespaces[0].id;
        kvc_stats_free(s);
        ck_assert_int_eq(kvc_drop_namespace(watch, ns, NULL), 0);
        ck_assert_int_eq(kvc_stats_get(watch, &s), 0);
        ck_assert_uint_eq(s->n_namespaces, 0);
        kvc_stats_free(s);
        /* The whole table is free again. */
        for (int i = 0; i < 4; i++) {
                char name[16];

                snprintf(name, sizeof(name), "again-%d", i);
                E2E_ASSERT_RC(watch, kvc_register_namespace(watch, name, &e2e_geom, &ns, NULL), 0);
        }
        kvc_disconnect(watch);
        stop(&t);
}
END_TEST

/* ---- recovery ------------------------------------------------------------- */

struct rec {
        struct t *t;
        int recovered;          /* second run: names joined with their block */
};

/* First run: three namespaces of uid 65534, one durable block each. */
static int make_three(void *arg)
{
        struct rec *x = arg;

        for (int i = 0; i < 3; i++) {
                struct client cl;
                char name[16];
                uint8_t st;
                uint64_t id;
                struct kvc_block_ref ref;

                snprintf(name, sizeof(name), "rec-%d", i);
                CHILD_ASSERT(client_open(x->t->d.socket_path, name, 4, &cl) == 0, "open %s", name);
                ref_of(10 + (uint64_t)i, 0, 0, &ref);
                e2e_fill_block(kvc_pool_slot(cl.p, 0), E2E_BLOCK_BYTES, &ref.key, 0, 0x70 + (uint64_t)i);
                CHILD_ASSERT(kvc_put_submit_flags(cl.c, cl.ns, cl.p, &ref, 1, KVC_PUT_DURABLE, &st, &id) == 0,
                             "submit");
                CHILD_ASSERT(kvc_wait(cl.c, id, -1) == 1 && st == KVC_ITEM_OK, "durable put %s: %u", name, st);
                client_close(&cl);
        }
        return 0;
}

/* Second run, quota-namespaces 1: one of its namespaces came back, its
 * own, with its block; registering the others is past its quota. */
static int find_recovered(void *arg)
{
        struct rec *x = arg;
        kvc_client *c;
        int quota = 0;

        CHILD_ASSERT(kvc_connect(x->t->d.socket_path, "rec", &c) == 0, "connect");
        for (int i = 0; i < 3; i++) {
                char name[16];
                uint32_t ns;
                int rc;

                snprintf(name, sizeof(name), "rec-%d", i);
                rc = kvc_register_namespace(c, name, &e2e_geom, &ns, NULL);
                if (rc == -KVC_E_QUOTA) {
                        quota++;
                        continue;
                }
                CHILD_ASSERT(rc == 0, "register %s: %d", name, rc);
                {
                        kvc_pool *p;
                        struct got g;

                        CHILD_ASSERT(kvc_pool_create(c, 1, E2E_BLOCK_BYTES, &p) == 0, "pool");
                        CHILD_ASSERT(get_blocks(c, ns, p, 10 + (uint64_t)i, 0, 1, 0x70 + (uint64_t)i, &g) == 0 &&
                                     g.ok == 1, "%s's durable block after the restart: ok %u miss %u wrong %u",
                                     name, g.ok, g.miss, g.wrong);
                        kvc_pool_free(p);
                }
                x->recovered++;
        }
        CHILD_ASSERT(x->recovered == 1 && quota == 2, "%d recovered, %d over quota", x->recovered, quota);
        kvc_disconnect(c);
        return 0;
}

START_TEST(test_recovery_keeps_owners_and_limits)
{
        struct ssd_dir dir;
        struct rec x = { 0 };
        struct t t;
        struct kvc_stats *s;
        kvc_client *c;
        uint32_t ns;
        bool created = false;

        ssd_dir_make(&dir);
        {
                const char *const extra[] = { "--ssd-dir", dir.path, "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M",
                                              NULL };

                start(&t, NULL, extra);
                x.t = &t;
                run_as(NOBODY, NOBODY, NULL, 0, make_three, &x, "three namespaces");
                stop(&t);
        }
        {
                const char *const extra[] = { "--ssd-dir", dir.path, "--ssd-bytes", "64M", "--ssd-extent-bytes", "1M",
                                              "--quota-namespaces", "1", NULL };

                start(&t, NULL, extra);
                x.t = &t;
                /* Root sees one namespace, uid 65534's, not root's. */
                ck_assert_int_eq(kvc_connect(t.d.socket_path, "root", &c), 0);
                ck_assert_int_eq(kvc_stats_get(c, &s), 0);
                ck_assert_uint_eq(s->n_namespaces, 1);
                ck_assert_uint_eq(s->namespaces[0].owner, NOBODY);
                ck_assert_uint_eq(s->namespaces[0].blocks, 1);
                kvc_stats_free(s);
                run_as(NOBODY, NOBODY, NULL, 0, find_recovered, &x, "after the restart");
                /* The same name is root's own namespace, a new one. */
                ck_assert_int_eq(kvc_register_namespace(c, "rec-0", &e2e_geom, &ns, NULL), 0);
                ck_assert_int_eq(kvc_stats_get(c, &s), 0);
                for (uint32_t i = 0; i < s->n_namespaces; i++)
                        if (s->namespaces[i].id == ns)
                                created = s->namespaces[i].owner == 0 && s->namespaces[i].blocks == 0;
                kvc_stats_free(s);
                ck_assert(created);
                kvc_disconnect(c);
                stop(&t);
        }
        ssd_dir_remove(&dir);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("tenants");
        TCase *tc = tcase_create("tenants");

        tcase_set_timeout(tc, E2E_TCASE_TIMEOUT);
        tcase_add_test(tc, test_private_by_default);
        tcase_add_test(tc, test_shared_namespace);
        tcase_add_test(tc, test_admin_group);
        tcase_add_test(tc, test_kvdrivectl_drop);
        tcase_add_test(tc, test_host_quota_evicts_own);
        tcase_add_test(tc, test_pool_namespace_and_item_quota);
        tcase_add_test(tc, test_connections_per_uid);
        tcase_add_test(tc, test_namespaces_go_away);
        tcase_add_test(tc, test_recovery_keeps_owners_and_limits);
        suite_add_tcase(s, tc);
        return s;
}

int main(void)
{
        SRunner *sr;
        int failed;

        if (geteuid() != 0) {
                printf("1..0 # SKIP the tenants suite switches uids: it needs root\n");
                return 77;
        }
        sr = srunner_create(suite());
        srunner_set_tap(sr, "-");
        srunner_run_all(sr, CK_SILENT);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
