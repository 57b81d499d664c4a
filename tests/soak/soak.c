/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-soak: a bounded soak of a real daemon with an SSD tier.
 *
 *   kvdrive-soak --seconds N [--clients 8] [--restart-every S] [--dir DIR]
 *
 * $KVDRIVED names the daemon (tests/soak/run.sh and meson set it). For N
 * seconds, client processes (8) do mixed work against one namespace — Put,
 * durable Put, Get, Get counted on a shared counter page, Lookup, Delete,
 * Prefetch, Scores, Stats — over a fixed universe of blocks whose bytes are
 * a function of their key, so that every Get that says OK is checked byte
 * for byte (a miss is allowed, other bytes never). Meanwhile:
 *   - a random client is SIGKILLed every 0.2-1.5 s and replaced;
 *   - the daemon is SIGKILLed and restarted on the same SSD tier every
 *     --restart-every seconds during the first 60% of the run; after each
 *     restart every block a client had acknowledged durable (the clients log
 *     (key, layer, hash) once the Put's reply says OK, in DIR/durable-*.log)
 *     must come back with the right bytes;
 *   - at 75% of the run every client is killed and the daemon's RSS
 *     (/proc/PID/status VmRSS) and open fds (/proc/PID/fd) are taken as the
 *     baseline; the clients come back; at the end they are all killed again
 *     and both must be back: fds equal, RSS within RSS_SLACK_KB + 10% (not
 *     judged under ASan, whose quarantine holds freed memory back).
 * Plain blocks are a fixed universe (3072 of 8 KiB); durable ones are
 * fresh keys of the daemon start's own key space, written at a steady rate
 * (DURABLE_PER_S) so that some are always only just acknowledged when the
 * daemon is killed, and deleted once checked across two restarts. All of it
 * fits the 512 MiB SSD tier, so no SSD eviction may excuse a lost block.
 * Prints one summary line; exits 0 only if nothing was wrong.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <kvdrive/client.h>

#include "daemon.h"

#define NS_NAME     "soak-model"
#define LAYERS      4u
#define BLOCK_BYTES 8192u               /* 2 kv heads x 64 dims x 16 tokens x f16 x K,V */
#define NKEYS       768u                /* plain keys (x LAYERS blocks): put, got, deleted at random */
#define EPOCHS      64u                 /* durable key spaces: one per daemon start (the last one repeats) */
#define DMAX        16384u              /* durable blocks per epoch at most */
#define DURABLE_PER_S 160u              /* durable blocks acknowledged per second at most, all clients */
#define KEY_HI      0x736f616b2d6b6579ull
#define POOL_SLOTS  64u
#define MAX_CLIENTS 32
#define WAIT_MS     30000               /* a request that takes longer is a stall: a failure */
#define RSS_SLACK_KB 8192

/* Under ASan the daemon's RSS is its allocator's quarantine (up to 256 MiB
 * of freed memory held back on purpose), not the daemon: reported, not
 * judged. LeakSanitizer judges leaks there, at the daemon's clean stop. */
#if defined(__SANITIZE_ADDRESS__)
#define JUDGE_RSS false
#else
#define JUDGE_RSS true
#endif

enum op {
        OP_PUT, OP_DURABLE, OP_GET, OP_GET_COUNTED, OP_LOOKUP, OP_DELETE, OP_PREFETCH, OP_SCORES,
        OP_STATS, OP_COUNT,
};

static const char *const op_names[OP_COUNT] = {
        "put", "durable", "get", "counted", "lookup", "delete", "prefetch", "scores", "stats",
};

/* Shared by the supervisor and its client processes (MAP_SHARED). */
struct shared {
        _Atomic uint32_t seq;           /* seqlock over sock and epoch: odd while they change */
        char sock[108];
        uint32_t epoch;                 /* the daemon's start count: its durable key space */
        int64_t epoch_ms;               /* when that start was published */
        _Atomic uint32_t durable_next[EPOCHS];  /* next fresh durable block of each epoch */
        _Atomic uint64_t ops[OP_COUNT];
        _Atomic uint64_t blocks_checked;        /* OK Get items compared byte for byte */
        _Atomic uint64_t wrong;                 /* Get items with other bytes: must stay 0 */
        _Atomic uint64_t failures;              /* protocol errors, stalls, bad counts */
        _Atomic uint64_t reconnects;
};

static struct shared *sh;
static const struct kvc_geometry geom = { LAYERS, 2, 64, KVC_DTYPE_F16, 16 };
static char dir[256];

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
        struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static uint64_t splitmix(uint64_t *s)
{
        uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

/* The bytes of block (key, layer): the same in every process and run. */
static void fill_block(void *buf, struct kvc_key key, uint32_t layer)
{
        uint64_t s = (key.hi * 0x9e3779b97f4a7c15ull) ^ ((key.lo << 8 | layer) * 0x2545f4914f6cdd1dull);

        for (size_t i = 0; i < BLOCK_BYTES; i += 8) {
                uint64_t v = splitmix(&s);

                memcpy((uint8_t *)buf + i, &v, 8);
        }
}

/* Plain key k; durable block i of an epoch (its key and layer): each
 * daemon start has its own durable key space, written afresh at a steady
 * rate, so that blocks acknowledged just before a SIGKILL (still only in
 * host memory, but for their durability) are there to be checked. */
static struct kvc_key key_of(uint32_t k)
{
        return (struct kvc_key){ KEY_HI, k };
}

static struct kvc_block_ref durable_ref(uint32_t epoch, uint32_t i, uint32_t slot)
{
        return (struct kvc_block_ref){ .key = { KEY_HI + 1 + epoch, i / LAYERS }, .layer = i % LAYERS,
                                       .slot = slot };
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fprintf(stderr, "soak[%d]: ", (int)getpid());
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        atomic_fetch_add(&sh->failures, 1);
}

/* ---- clients ----------------------------------------------------------- */

/* What a durable Put's acknowledgement is logged as. */
struct durable_rec {
        uint64_t key_hi, key_lo;
        uint32_t layer, pad;
        uint64_t hash;                  /* XXH3-64 of the block's bytes */
};

struct client {
        kvc_client *c;
        kvc_pool *p;
        kvc_counters *k;
        uint32_t ns;
        uint32_t epoch;                 /* of the daemon connected to */
        int64_t epoch_ms;
        uint64_t rng;
        int log_fd;
        uint8_t want[BLOCK_BYTES];
};

static uint32_t rnd(struct client *cl, uint32_t n)
{
        return (uint32_t)(splitmix(&cl->rng) % n);
}

static void read_sock(char *buf, struct client *cl)
{
        uint32_t s;

        do {
                while ((s = atomic_load(&sh->seq)) & 1)
                        nap_ms(1);
                memcpy(buf, sh->sock, sizeof(sh->sock));
                cl->epoch = sh->epoch;
                cl->epoch_ms = sh->epoch_ms;
        } while (atomic_load(&sh->seq) != s);
}

static void client_close(struct client *cl)
{
        cl->k = kvc_counters_free(cl->k);
        cl->p = kvc_pool_free(cl->p);
        cl->c = kvc_disconnect(cl->c);
}

static int client_open(struct client *cl)
{
        char sock[sizeof(sh->sock)];
        int rc;

        read_sock(sock, cl);
        rc = kvc_connect(sock, "soak", &cl->c);
        if (rc < 0)
                return rc;
        rc = kvc_register_namespace(cl->c, NS_NAME, &geom, &cl->ns, NULL);
        if (rc == 0)
                rc = kvc_pool_create(cl->c, POOL_SLOTS, BLOCK_BYTES, &cl->p);
        if (rc == 0)
                rc = kvc_counters_create(cl->c, 1, &cl->k);
        if (rc < 0)
                client_close(cl);
        return rc;
}

/* A failed call: a protocol error is a failure (we only send valid
 * requests), a system error means the daemon went away. */
static int lost(struct client *cl, const char *what, int rc)
{
        if (rc <= -KVC_E_BASE || rc == -ETIMEDOUT)
                fail("%s: %s (%s)", what, kvc_strerror(rc), cl->c ? kvc_last_error(cl->c) : "");
        return rc;
}

/* n distinct plain blocks into refs (slots 0..n); with durable, a third of
 * them are durable blocks of this epoch already put (or being put). */
static void pick(struct client *cl, struct kvc_block_ref *refs, uint32_t n, bool durable)
{
        uint32_t put = atomic_load(&sh->durable_next[cl->epoch]);

        for (uint32_t i = 0; i < n; i++) {
                bool dup;

                do {
                        if (durable && put > 0 && rnd(cl, 3) == 0)
                                refs[i] = durable_ref(cl->epoch, rnd(cl, put < DMAX ? put : DMAX), i);
                        else
                                refs[i] = (struct kvc_block_ref){ .key = key_of(rnd(cl, NKEYS)),
                                                                  .layer = rnd(cl, LAYERS), .slot = i };
                        dup = false;
                        for (uint32_t j = 0; j < i; j++)
                                dup |= refs[j].key.hi == refs[i].key.hi && refs[j].key.lo == refs[i].key.lo &&
                                       refs[j].layer == refs[i].layer;
                } while (dup);
        }
}

/* n fresh durable blocks of this epoch into refs, within the rate; fewer
 * (maybe 0) when the budget so far is spent. */
static uint32_t pick_durable(struct client *cl, struct kvc_block_ref *refs, uint32_t n)
{
        int64_t budget = (now_ms() - cl->epoch_ms) * DURABLE_PER_S / 1000;
        uint32_t first;

        if (budget > DMAX)
                budget = DMAX;
        if ((int64_t)atomic_load(&sh->durable_next[cl->epoch]) + n > budget)
                return 0;
        first = atomic_fetch_add(&sh->durable_next[cl->epoch], n);
        if (first >= DMAX)
                return 0;
        if (first + n > DMAX)
                n = DMAX - first;
        for (uint32_t i = 0; i < n; i++)
                refs[i] = durable_ref(cl->epoch, first + i, i);
        return n;
}

static int do_put(struct client *cl, bool durable)
{
        struct kvc_block_ref refs[16];
        uint8_t st[16];
        uint32_t n = 1 + rnd(cl, 16);
        uint64_t id;
        int rc;

        if (durable)
                n = pick_durable(cl, refs, n);
        if (n == 0) {                   /* over the durable rate: a plain Put instead */
                n = 1 + rnd(cl, 16);
                durable = false;
        }
        if (!durable)
                pick(cl, refs, n, false);
        for (uint32_t i = 0; i < n; i++)
                fill_block(kvc_pool_slot(cl->p, i), refs[i].key, refs[i].layer);
        rc = kvc_put_submit_flags(cl->c, cl->ns, cl->p, refs, n, durable ? KVC_PUT_DURABLE : 0, st, &id);
        if (rc == 0)
                rc = kvc_wait(cl->c, id, WAIT_MS);
        if (rc < 0)
                return lost(cl, durable ? "durable put" : "put", rc);
        for (uint32_t i = 0; durable && i < n; i++) {
                struct durable_rec r = { refs[i].key.hi, refs[i].key.lo, refs[i].layer, 0,
                                         XXH3_64bits(kvc_pool_slot(cl->p, i), BLOCK_BYTES) };

                if (st[i] == KVC_ITEM_OK && write(cl->log_fd, &r, sizeof(r)) != sizeof(r))
                        fail("durable log: %s", strerror(errno));
        }
        return 0;
}

/* Checks every OK item of a Get against the block's bytes. */
static void check_got(struct client *cl, const struct kvc_block_ref *refs, const uint8_t *st, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++) {
                if (st[i] == KVC_ITEM_MISS)
                        continue;
                if (st[i] != KVC_ITEM_OK) {
                        fail("get: item %u status %u", i, st[i]);
                        continue;
                }
                fill_block(cl->want, refs[i].key, refs[i].layer);
                atomic_fetch_add(&sh->blocks_checked, 1);
                if (memcmp(cl->want, kvc_pool_slot(cl->p, refs[i].slot), BLOCK_BYTES) != 0) {
                        atomic_fetch_add(&sh->wrong, 1);
                        fail("get: block (%llu, %u) came back with other bytes",
                             (unsigned long long)refs[i].key.lo, refs[i].layer);
                }
        }
}

static int do_get(struct client *cl, bool counted)
{
        struct kvc_block_ref refs[32];
        uint8_t st[32];
        uint32_t n = 1 + rnd(cl, 32), before = kvc_counter_done(cl->k, 0);
        uint64_t id;
        int rc;

        pick(cl, refs, n, true);
        for (uint32_t i = 0; i < n; i++) {
                memset(kvc_pool_slot(cl->p, i), 0xa5, BLOCK_BYTES);
                refs[i].counter = counted;
        }
        rc = kvc_get_submit(cl->c, cl->ns, cl->p, refs, n, st, &id);
        if (rc == 0 && counted) {
                rc = kvc_counter_wait(cl->k, 0, before + n, WAIT_MS);
                if (rc == -ETIMEDOUT)
                        return lost(cl, "counter wait", rc);
        }
        if (rc == 0)
                rc = kvc_wait(cl->c, id, WAIT_MS);
        if (rc < 0)
                return lost(cl, counted ? "counted get" : "get", rc);
        if (counted && kvc_counter_done(cl->k, 0) != before + n)
                fail("counted get of %u items moved the counter from %u to %u", n, before,
                     kvc_counter_done(cl->k, 0));
        check_got(cl, refs, st, n);
        return 0;
}

static int do_lookup(struct client *cl)
{
        struct kvc_key keys[16];
        uint32_t prefix[LAYERS], n = 1 + rnd(cl, 16), k0 = rnd(cl, NKEYS - 16);
        int rc;

        for (uint32_t i = 0; i < n; i++)
                keys[i] = key_of(k0 + i);
        rc = kvc_lookup(cl->c, cl->ns, keys, n, prefix, LAYERS);
        if (rc < 0)
                return lost(cl, "lookup", rc);
        for (uint32_t l = 0; l < LAYERS; l++)
                if (prefix[l] > n)
                        fail("lookup of %u keys: prefix %u at layer %u", n, prefix[l], l);
        return 0;
}

static int do_delete(struct client *cl)
{
        struct kvc_key keys[8];
        uint32_t n = 1 + rnd(cl, 8);
        int rc;

        for (uint32_t i = 0; i < n; i++)
                keys[i] = key_of(rnd(cl, NKEYS));
        rc = kvc_delete(cl->c, cl->ns, keys, n, rnd(cl, 2) ? -1 : (int32_t)rnd(cl, LAYERS));
        return rc < 0 ? lost(cl, "delete", rc) : 0;
}

static int do_prefetch(struct client *cl)
{
        struct kvc_block_ref refs[32];
        uint8_t st[32];
        uint32_t n = 1 + rnd(cl, 32);
        int rc;

        pick(cl, refs, n, true);
        rc = kvc_prefetch(cl->c, cl->ns, refs, n, st);
        if (rc < 0)
                return lost(cl, "prefetch", rc);
        for (uint32_t i = 0; i < n; i++)
                if (st[i] != KVC_ITEM_OK && st[i] != KVC_ITEM_MISS && st[i] != KVC_ITEM_NO_SPACE)
                        fail("prefetch: item %u status %u", i, st[i]);
        return 0;
}

static int do_scores(struct client *cl)
{
        struct kvc_block_score sc[16];
        struct kvc_block_ref refs[16];
        uint32_t n = 1 + rnd(cl, 16);
        int rc;

        pick(cl, refs, n, true);
        for (uint32_t i = 0; i < n; i++)
                sc[i] = (struct kvc_block_score){ refs[i].key, refs[i].layer, (float)rnd(cl, 1000) / 1000.0f };
        rc = kvc_report_scores(cl->c, cl->ns, sc, n);
        return rc < 0 ? lost(cl, "scores", rc) : 0;
}

static int do_stats(struct client *cl)
{
        struct kvc_stats *s = NULL;
        int rc = kvc_stats_get(cl->c, &s);

        if (rc < 0)
                return lost(cl, "stats", rc);
        kvc_stats_free(s);
        return 0;
}

static enum op pick_op(struct client *cl)
{
        static const uint8_t weights[OP_COUNT] = { 20, 10, 25, 8, 8, 7, 10, 7, 5 };
        uint32_t r = rnd(cl, 100);

        for (int o = 0; o < OP_COUNT; o++) {
                if (r < weights[o])
                        return (enum op)o;
                r -= weights[o];
        }
        return OP_STATS;
}

/* A client process: works until killed, reconnecting whenever the daemon
 * goes away. */
static _Noreturn void client_main(unsigned index)
{
        struct client *cl = calloc(1, sizeof(*cl));
        char path[512];

        /* Hold nothing of the supervisor's: not its daemon's notify and
         * watchdog pipes (their ends must close when it closes them), not
         * its connections. */
        close_range(3, ~0u, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (!cl || getrandom(&cl->rng, sizeof(cl->rng), 0) != sizeof(cl->rng))
                _exit(3);
        snprintf(path, sizeof(path), "%s/durable-%u-%d.log", dir, index, (int)getpid());
        cl->log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (cl->log_fd < 0)
                _exit(3);
        for (;;) {
                if (client_open(cl) < 0) {
                        nap_ms(20);
                        continue;
                }
                for (;;) {
                        enum op o = pick_op(cl);
                        int rc;

                        switch (o) {
                        case OP_PUT:
                        case OP_DURABLE:
                                rc = do_put(cl, o == OP_DURABLE);
                                break;
                        case OP_GET:
                        case OP_GET_COUNTED:
                                rc = do_get(cl, o == OP_GET_COUNTED);
                                break;
                        case OP_LOOKUP:
                                rc = do_lookup(cl);
                                break;
                        case OP_DELETE:
                                rc = do_delete(cl);
                                break;
                        case OP_PREFETCH:
                                rc = do_prefetch(cl);
                                break;
                        case OP_SCORES:
                                rc = do_scores(cl);
                                break;
                        default:
                                rc = do_stats(cl);
                                break;
                        }
                        if (rc < 0)
                                break;
                        atomic_fetch_add(&sh->ops[o], 1);
                }
                client_close(cl);
                atomic_fetch_add(&sh->reconnects, 1);
        }
}

/* ---- the supervisor ------------------------------------------------------ */

struct soak {
        struct kvd_test_daemon d;
        char ssd_dir[300];
        pid_t clients[MAX_CLIENTS];
        unsigned n_clients;
        uint64_t kills, restarts, checks, verified, last_verified, unexpected_exits;
        bool retired[EPOCHS];           /* epochs checked across two restarts, then deleted */
};

static pid_t spawn_client(unsigned index)
{
        pid_t pid = fork();

        if (pid == 0)
                client_main(index);
        return pid;
}

static void publish_sock(const char *path, uint32_t epoch)
{
        atomic_fetch_add(&sh->seq, 1);
        snprintf(sh->sock, sizeof(sh->sock), "%s", path);
        sh->epoch = epoch;
        sh->epoch_ms = now_ms();
        atomic_fetch_add(&sh->seq, 1);
}

static int start_daemon(struct soak *so)
{
        const char *args[] = { "--host-bytes", "16M", "--ssd-dir", so->ssd_dir, "--ssd-bytes", "512M",
                               "--ssd-extent-bytes", "1M", "--max-clients", "64", "--log-level", "warning", NULL };
        int rc = kvd_test_daemon_start(&so->d, args);

        if (rc < 0) {
                fail("daemon start: %s", so->d.error);
                return rc;
        }
        publish_sock(so->d.socket_path, so->restarts < EPOCHS ? (uint32_t)so->restarts : EPOCHS - 1);
        return 0;
}

static void kill_daemon(struct soak *so)
{
        int st;

        kvd_test_daemon_kill(&so->d, SIGKILL);
        kvd_test_daemon_wait_exit(&so->d, 10000, &st);
        kvd_test_daemon_stop(&so->d);
}

/* Reaps clients that died on their own (a failure: only we kill them) and
 * replaces them. */
static void reap_clients(struct soak *so)
{
        for (unsigned i = 0; i < so->n_clients; i++) {
                int st;

                if (so->clients[i] > 0 && waitpid(so->clients[i], &st, WNOHANG) == so->clients[i]) {
                        char why[64];

                        fail("client %u exited by itself: %s", i, kvd_test_status_str(st, why, sizeof(why)));
                        so->unexpected_exits++;
                        so->clients[i] = spawn_client(i);
                }
        }
}

static void kill_client(struct soak *so, unsigned i)
{
        if (so->clients[i] <= 0)
                return;
        kill(so->clients[i], SIGKILL);
        waitpid(so->clients[i], NULL, 0);
        so->clients[i] = 0;
        so->kills++;
}

static void kill_all_clients(struct soak *so)
{
        for (unsigned i = 0; i < so->n_clients; i++)
                kill_client(so, i);
}

static void spawn_all_clients(struct soak *so)
{
        for (unsigned i = 0; i < so->n_clients; i++)
                if (so->clients[i] <= 0)
                        so->clients[i] = spawn_client(i);
}

#define DURABLE_BLOCKS (EPOCHS * DMAX)

/* The durable logs: every block acknowledged durable, with the hash logged
 * for it (hashes[u] and has[u] for u = epoch * DMAX + its index in the
 * epoch), those of retired epochs left out. */
static int read_durable_logs(const struct soak *so, uint64_t *hashes, uint8_t *has)
{
        struct dirent *e;
        int bad = 0;
        DIR *dp = opendir(dir);

        memset(has, 0, DURABLE_BLOCKS);
        while (dp && (e = readdir(dp))) {
                struct durable_rec r;
                char path[600];
                int fd;

                if (strncmp(e->d_name, "durable-", 8) != 0)
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                fd = open(path, O_RDONLY | O_CLOEXEC);
                while (fd >= 0 && read(fd, &r, sizeof(r)) == sizeof(r)) {
                        uint64_t ep = r.key_hi - KEY_HI - 1, i = r.key_lo * LAYERS + r.layer;
                        uint32_t u = (uint32_t)(ep * DMAX + i);

                        if (r.key_hi <= KEY_HI || ep >= EPOCHS || r.layer >= LAYERS || i >= DMAX) {
                                fail("durable log %s: a record of no block of ours", path);
                                bad++;
                                continue;
                        }
                        if (so->retired[ep])
                                continue;
                        if (has[u] && hashes[u] != r.hash) {
                                fail("durable log %s: two hashes for durable block %u", path, u);
                                bad++;
                        }
                        has[u] = 1;
                        hashes[u] = r.hash;
                }
                if (fd >= 0)
                        close(fd);
        }
        if (dp)
                closedir(dp);
        return bad;
}

/* Deletes every block of epoch ep, once checked across a restart: the SSD
 * tier must keep room for the epochs to come. */
static int retire_epoch(struct soak *so, kvc_client *c, uint32_t ns, uint32_t ep)
{
        struct kvc_key keys[256];

        for (uint32_t k = 0; k < DMAX / LAYERS; k += 256) {
                int rc;

                for (uint32_t i = 0; i < 256; i++)
                        keys[i] = (struct kvc_key){ KEY_HI + 1 + ep, k + i };
                rc = kvc_delete(c, ns, keys, 256, -1);
                if (rc < 0) {
                        fail("retiring epoch %u: %s (%s)", ep, kvc_strerror(rc), kvc_last_error(c));
                        return rc;
                }
        }
        so->retired[ep] = true;
        return 0;
}

/* Every block a client logged as acknowledged durable must be there, byte
 * for byte: the hash it logged, and the bytes of its key. Then the epochs
 * before the last two are retired (after a restart only). */
static int check_durable(struct soak *so, bool retire)
{
        static uint64_t hashes[DURABLE_BLOCKS];
        static uint8_t has[DURABLE_BLOCKS];
        struct kvc_block_ref refs[POOL_SLOTS];
        uint8_t st[POOL_SLOTS], want[BLOCK_BYTES];
        uint32_t us[POOL_SLOTS];
        kvc_client *c = NULL;
        kvc_pool *p = NULL;
        uint64_t verified = 0;
        uint32_t ns, u = 0;
        int rc, bad = read_durable_logs(so, hashes, has);

        rc = kvc_connect(so->d.socket_path, "soak-check", &c);
        if (rc == 0)
                rc = kvc_register_namespace(c, NS_NAME, &geom, &ns, NULL);
        if (rc == 0)
                rc = kvc_pool_create(c, POOL_SLOTS, BLOCK_BYTES, &p);
        if (rc < 0) {
                fail("durable check: cannot connect: %s", kvc_strerror(rc));
                kvc_disconnect(c);
                return rc;
        }
        while (u < DURABLE_BLOCKS) {
                uint32_t n = 0;

                for (; u < DURABLE_BLOCKS && n < POOL_SLOTS; u++) {
                        if (!has[u])
                                continue;
                        refs[n] = durable_ref(u / DMAX, u % DMAX, n);
                        us[n++] = u;
                }
                if (n == 0)
                        break;
                memset(st, 0xff, sizeof(st));
                rc = kvc_get(c, ns, p, refs, n, st);
                if (rc < 0) {
                        fail("durable check: get: %s (%s)", kvc_strerror(rc), kvc_last_error(c));
                        bad++;
                        break;
                }
                for (uint32_t i = 0; i < n; i++) {
                        const void *got = kvc_pool_slot(p, i);

                        fill_block(want, refs[i].key, refs[i].layer);
                        if (st[i] != KVC_ITEM_OK) {
                                fail("durable block %u of epoch %u was acknowledged; now status %u", us[i] % DMAX,
                                     us[i] / DMAX, st[i]);
                                bad++;
                        } else if (XXH3_64bits(got, BLOCK_BYTES) != hashes[us[i]] ||
                                   memcmp(got, want, BLOCK_BYTES) != 0) {
                                atomic_fetch_add(&sh->wrong, 1);
                                fail("durable block %u of epoch %u came back with other bytes", us[i] % DMAX,
                                     us[i] / DMAX);
                                bad++;
                        } else {
                                verified++;
                        }
                }
        }
        for (uint32_t ep = 0; retire && bad == 0 && ep + 2 <= so->restarts && ep < EPOCHS; ep++)
                if (!so->retired[ep] && retire_epoch(so, c, ns, ep) < 0)
                        bad++;
        kvc_pool_free(p);
        kvc_disconnect(c);
        so->checks++;
        so->verified += verified;
        so->last_verified = verified;
        return bad ? -EIO : 0;
}

/* ---- the daemon's resources --------------------------------------------- */

struct usage {
        long rss_kb;
        int fds;
};

static int proc_usage(pid_t pid, struct usage *ret)
{
        char path[64], line[256];
        struct dirent *e;
        FILE *f;
        DIR *dp;

        *ret = (struct usage){ -1, 0 };
        snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
        f = fopen(path, "re");
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &ret->rss_kb) == 1)
                        break;
        if (f)
                fclose(f);
        snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
        dp = opendir(path);
        while (dp && (e = readdir(dp)))
                ret->fds += e->d_name[0] != '.';
        if (dp)
                closedir(dp);
        return ret->rss_kb >= 0 && dp ? 0 : -ESRCH;
}

/*
 * The daemon's usage once no client is connected: a probe connects, waits
 * (stats) until it is the only client, notes the fd count, disconnects, and
 * waits until the daemon has closed its session (one fd fewer).
 */
static int idle_usage(struct soak *so, struct usage *ret)
{
        int64_t deadline = now_ms() + WAIT_MS;
        struct usage with_probe;
        kvc_client *c = NULL;
        int rc;

        rc = kvc_connect(so->d.socket_path, "soak-probe", &c);
        for (;;) {
                struct kvc_stats *s = NULL;
                uint32_t clients;

                if (rc < 0 || (rc = kvc_stats_get(c, &s)) < 0) {
                        fail("probe: %s", kvc_strerror(rc));
                        kvc_disconnect(c);
                        return rc;
                }
                clients = s->clients;
                kvc_stats_free(s);
                if (clients == 1)
                        break;
                if (now_ms() > deadline) {
                        fail("%u clients still connected long after every client process died", clients - 1);
                        kvc_disconnect(c);
                        return -ETIMEDOUT;
                }
                nap_ms(10);
        }
        rc = proc_usage(so->d.pid, &with_probe);
        kvc_disconnect(c);
        while (rc == 0 && (rc = proc_usage(so->d.pid, ret)) == 0 && ret->fds >= with_probe.fds) {
                if (now_ms() > deadline) {
                        fail("the daemon kept the probe's fd open");
                        return -ETIMEDOUT;
                }
                nap_ms(5);
        }
        return rc;
}

/* ---- main ---------------------------------------------------------------- */

static void usage(FILE *f)
{
        fprintf(f, "usage: kvdrive-soak --seconds N [--clients N] [--restart-every SECONDS] [--dir DIR]\n"
                   "  $KVDRIVED: the daemon to run (tests/soak/run.sh sets it)\n");
}

static int remove_tree(const char *path)
{
        char cmd[600];

        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", path);
        return system(cmd);
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "seconds", required_argument, NULL, 's' },
                { "clients", required_argument, NULL, 'c' },
                { "restart-every", required_argument, NULL, 'r' },
                { "dir", required_argument, NULL, 'd' },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        struct soak *so = calloc(1, sizeof(*so));
        long seconds = 0, restart_every = 0;
        struct usage base = { 0 }, end = { 0 };
        int64_t t0, t_end, t_restarts_end, t_baseline, next_kill, next_restart;
        bool baseline_taken = false, own_dir = false;
        uint64_t rng;
        int c, rc = 0;

        if (!so)
                return 1;
        so->n_clients = 8;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        seconds = strtol(optarg, NULL, 10);
                        break;
                case 'c':
                        so->n_clients = (unsigned)strtoul(optarg, NULL, 10);
                        break;
                case 'r':
                        restart_every = strtol(optarg, NULL, 10);
                        break;
                case 'd':
                        snprintf(dir, sizeof(dir), "%s", optarg);
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (seconds < 10 || so->n_clients < 1 || so->n_clients > MAX_CLIENTS || !getenv("KVDRIVED")) {
                usage(stderr);
                return 2;
        }
        if (restart_every <= 0)
                restart_every = seconds / 5 < 10 ? 10 : seconds / 5 > 60 ? 60 : seconds / 5;
        if (!dir[0]) {
                snprintf(dir, sizeof(dir), "%s/kvdrive-soak-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
                if (!mkdtemp(dir)) {
                        perror("mkdtemp");
                        return 1;
                }
                own_dir = true;
        }
        snprintf(so->ssd_dir, sizeof(so->ssd_dir), "%s/ssd", dir);
        if (mkdir(so->ssd_dir, 0700) < 0 && errno != EEXIST) {
                perror(so->ssd_dir);
                return 1;
        }
        sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (sh == MAP_FAILED || getrandom(&rng, sizeof(rng), 0) != sizeof(rng))
                return 1;
        signal(SIGPIPE, SIG_IGN);
        if (start_daemon(so) < 0)
                return 1;

        t0 = now_ms();
        t_end = t0 + seconds * 1000;
        t_restarts_end = t0 + seconds * 600;
        t_baseline = t0 + seconds * 750;
        next_kill = t0 + 200 + (int64_t)(splitmix(&rng) % 1300);
        next_restart = t0 + restart_every * 1000;
        spawn_all_clients(so);
        while (now_ms() < t_end) {
                int64_t now = now_ms();

                reap_clients(so);
                if (now >= next_kill) {
                        unsigned i = (unsigned)(splitmix(&rng) % so->n_clients);

                        kill_client(so, i);
                        so->clients[i] = spawn_client(i);
                        next_kill = now + 200 + (int64_t)(splitmix(&rng) % 1300);
                }
                if (now >= next_restart && now < t_restarts_end) {
                        kill_daemon(so);
                        so->restarts++;
                        if (start_daemon(so) < 0 || check_durable(so, true) < 0) {
                                rc = 1;
                                break;
                        }
                        next_restart = now_ms() + restart_every * 1000;
                }
                if (now >= t_baseline && !baseline_taken) {
                        kill_all_clients(so);
                        if (idle_usage(so, &base) < 0) {
                                rc = 1;
                                break;
                        }
                        baseline_taken = true;
                        spawn_all_clients(so);
                }
                nap_ms(20);
        }
        kill_all_clients(so);
        if (rc == 0 && (idle_usage(so, &end) < 0 || check_durable(so, false) < 0))
                rc = 1;
        if (rc == 0 && end.fds != base.fds) {
                fail("the daemon holds %d fds with no client, %d at the baseline", end.fds, base.fds);
                rc = 1;
        }
        if (rc == 0 && JUDGE_RSS && end.rss_kb > base.rss_kb + RSS_SLACK_KB + base.rss_kb / 10) {
                fail("the daemon's RSS grew from %ld to %ld kB with no client", base.rss_kb, end.rss_kb);
                rc = 1;
        }
        if (kvd_test_daemon_stop(&so->d) < 0) {
                fail("clean stop: %s", so->d.error);
                rc = 1;
        }
        if (atomic_load(&sh->wrong) || atomic_load(&sh->failures))
                rc = 1;
        {
                uint64_t total = 0;

                for (int o = 0; o < OP_COUNT; o++)
                        total += atomic_load(&sh->ops[o]);
                printf("soak: %lds, %u clients: %llu ops (", seconds, so->n_clients, (unsigned long long)total);
                for (int o = 0; o < OP_COUNT; o++)
                        printf("%s%s %llu", o ? ", " : "", op_names[o], (unsigned long long)atomic_load(&sh->ops[o]));
                printf("), %llu Get blocks checked, %llu wrong; %llu client kills, %llu reconnects; "
                       "%llu daemon restarts, %llu durable checks, %llu durable blocks verified (last %llu); "
                       "daemon RSS %ld -> %ld kB, fds %d -> %d (allowed: fds equal, RSS +%d kB +10%%%s); "
                       "%llu failures: %s\n",
                       (unsigned long long)atomic_load(&sh->blocks_checked), (unsigned long long)atomic_load(&sh->wrong),
                       (unsigned long long)so->kills, (unsigned long long)atomic_load(&sh->reconnects),
                       (unsigned long long)so->restarts, (unsigned long long)so->checks,
                       (unsigned long long)so->verified, (unsigned long long)so->last_verified, base.rss_kb,
                       end.rss_kb, base.fds, end.fds, RSS_SLACK_KB, JUDGE_RSS ? "" : ", not judged under ASan",
                       (unsigned long long)atomic_load(&sh->failures),
                       rc ? "FAIL" : "PASS");
        }
        if (own_dir && rc == 0)
                remove_tree(dir);
        else if (rc)
                fprintf(stderr, "soak: kept %s (durable logs, SSD tier)\n", dir);
        free(so);
        munmap(sh, sizeof(*sh));
        return rc;
}
