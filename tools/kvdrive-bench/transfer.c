/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench transfer: Put/Get bandwidth of N client processes through
 * the daemon, next to memcpy of the same bytes by one thread and by as many
 * threads as the daemon has transfer workers.
 *
 * Per block size, each client (a forked process that connects by itself)
 * registers namespace "bench-<size>" (block_bytes == size), makes a pool of
 * batch*depth slots and private keys for its blocks. A first, untimed pass
 * Puts every block with its own byte pattern, Gets it back into scribbled
 * slots and checks every byte: a miss or a mismatch fails the run. Then
 * each of the R timed repeats Puts all blocks, Gets them all back and
 * deletes them (untimed), so that the next repeat copies again. Clients
 * start every timed phase together (a barrier through pipes) and report
 * their start and end times; a phase's bandwidth is all clients' bytes over
 * (latest end - earliest start). GB/s are 10^9 bytes per second.
 *
 * The memcpy anchor copies what a Get phase copies, with the cache state a
 * Get sees: all clients' bytes from a source as large as their blocks in
 * the host tier, into a destination ring as large as their pools (batch *
 * depth slots each, reused request after request), in block-size chunks.
 * It runs just before each timed Get, while the clients wait at the
 * barrier: once on one thread, once on `workers` threads (each its share
 * of the source and of the ring), timed like the clients' phases, each
 * after an untimed write of the ring.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "size.h"

#define BENCH_BLOCK_UNIT 4096u          /* block_bytes of one token of the geometry */
#define WAIT_TIMEOUT_MS 120000
#define JSON_SCHEMA 1

struct transfer_opts {
        const char *socket;
        uint32_t clients;
        uint64_t *sizes;
        size_t n_sizes;
        uint64_t bytes;                 /* per client per size */
        uint32_t batch;
        uint32_t depth;
        uint32_t repeat;
        uint32_t workers;               /* the daemon's transfer workers */
        bool json;
};

/* Child -> parent, over the child's pipe. */
enum { MSG_READY = 1, MSG_RESULT = 2 };
struct child_msg {
        uint32_t type;
        uint32_t pad;
        uint64_t bytes;
        uint64_t start_ns;
        uint64_t end_ns;
};

/* One client process's state for one block size. */
struct client {
        const struct transfer_opts *o;
        unsigned idx;
        uint64_t size;
        uint32_t nblocks;
        int up;                         /* write: messages to the parent */
        int down;                       /* read: one byte per "go" */
        kvc_client *c;
        uint32_t ns;
        kvc_pool *pool;
        struct kvc_key *keys;           /* nblocks */
        uint64_t seed;                  /* per-process pattern seed */
        struct kvc_block_ref *refs;     /* depth * batch */
        uint8_t *status;                /* depth * batch */
        uint64_t *ids;                  /* depth */
};

/* Results of one block size, medians over the repeats. */
struct size_result {
        uint64_t size;
        uint64_t bytes_per_client;
        double put_gbps;
        double get_gbps;
        double memcpy_gbps;             /* one thread */
        double memcpy_mt_gbps;          /* o->workers threads */
        double *put_runs;               /* repeat */
        double *get_runs;               /* repeat */
        double *mc_runs;                /* repeat */
        double *mc_mt_runs;             /* repeat */
};

/* Everything the parent allocated: a forked client frees it. */
struct transfer {
        struct transfer_opts o;
        struct size_result *res;        /* o.n_sizes */
};

static void transfer_free(struct transfer *t)
{
        for (size_t i = 0; t->res && i < t->o.n_sizes; i++) {
                free(t->res[i].put_runs);
                free(t->res[i].get_runs);
                free(t->res[i].mc_runs);
                free(t->res[i].mc_mt_runs);
        }
        free(t->res);
        t->res = NULL;
        free(t->o.sizes);
        t->o.sizes = NULL;
}

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench transfer [options]\n"
                "\n"
                "  -s, --socket PATH   daemon socket (default: $KVDRIVE_SOCKET or the system one)\n"
                "  -c, --clients N     client processes (default 2)\n"
                "  -z, --sizes LIST    block sizes, multiples of 4K (default 64K,1M)\n"
                "  -b, --bytes SIZE    bytes per client per size (default 32M; shrunk to half\n"
                "                      the host tier across all clients)\n"
                "  -B, --batch N       blocks per request (default 32)\n"
                "  -d, --depth N       requests in flight per client (default 4)\n"
                "  -r, --repeat R      timed repeats; medians reported (default 5)\n"
                "  -j, --json          print one JSON object\n"
                "  -h, --help          this help\n"
                "\n"
                "Sizes take K, M, G suffixes (powers of 1024). GB/s are 10^9 bytes/s.\n");
}

/* A pattern that differs per block and per process, so that a block served
 * from the wrong key or the wrong client cannot pass. */
static uint64_t pattern_start(uint64_t seed, uint64_t block)
{
        return ((seed ^ block) * 0x9e3779b97f4a7c15ull) | 1;
}

static uint64_t pattern_next(uint64_t x)
{
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return x;
}

static void pattern_fill(uint8_t *p, uint64_t bytes, uint64_t seed, uint64_t block)
{
        uint64_t x = pattern_start(seed, block);

        for (uint64_t off = 0; off + 8 <= bytes; off += 8) {
                x = pattern_next(x);
                memcpy(p + off, &x, 8);
        }
}

static bool pattern_check(const uint8_t *p, uint64_t bytes, uint64_t seed, uint64_t block)
{
        uint64_t x = pattern_start(seed, block), v;

        for (uint64_t off = 0; off + 8 <= bytes; off += 8) {
                x = pattern_next(x);
                memcpy(&v, p + off, 8);
                if (v != x)
                        return false;
        }
        return true;
}

/* Says why a client failed, on stderr. Returns -1. */
__attribute__((format(printf, 2, 3)))
static int child_fail(const struct client *cl, const char *fmt, ...)
{
        va_list ap;
        char sz[32];

        fprintf(stderr, "kvdrive-bench: client %u, size %s: ", cl->idx,
                bench_format_size(sz, sizeof(sz), cl->size));
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return -1;
}

static int daemon_fail(const struct client *cl, const char *what, int err)
{
        const char *msg = kvc_last_error(cl->c);

        return child_fail(cl, "%s: %s%s%s", what, kvc_strerror(err), *msg ? ": " : "", msg);
}

/* Submits request k of the phase: blocks [k*batch, +batch) through slot group k % depth. */
static int submit(struct client *cl, bool put, bool check, uint32_t k)
{
        uint32_t batch = cl->o->batch, g = k % cl->o->depth;
        uint32_t first = k * batch, n = cl->nblocks - first < batch ? cl->nblocks - first : batch;
        struct kvc_block_ref *refs = cl->refs + (size_t)g * batch;
        uint8_t *status = cl->status + (size_t)g * batch;
        int err;

        for (uint32_t i = 0; i < n; i++) {
                uint8_t *slot = kvc_pool_slot(cl->pool, g * batch + i);

                refs[i] = (struct kvc_block_ref){
                        .key = cl->keys[first + i],
                        .layer = 0,
                        .slot = g * batch + i,
                };
                if (check && put)
                        pattern_fill(slot, cl->size, cl->seed, first + i);
                else if (check)
                        memset(slot, 0xa5, cl->size);
        }
        err = put ? kvc_put_submit(cl->c, cl->ns, cl->pool, refs, n, status, &cl->ids[g])
                  : kvc_get_submit(cl->c, cl->ns, cl->pool, refs, n, status, &cl->ids[g]);
        return err < 0 ? daemon_fail(cl, put ? "put submit" : "get submit", err) : 0;
}

/* Waits for request k and checks every item. */
static int complete(struct client *cl, bool put, bool check, uint32_t k)
{
        uint32_t batch = cl->o->batch, g = k % cl->o->depth;
        uint32_t first = k * batch, n = cl->nblocks - first < batch ? cl->nblocks - first : batch;
        const uint8_t *status = cl->status + (size_t)g * batch;
        int r;

        r = kvc_wait(cl->c, cl->ids[g], WAIT_TIMEOUT_MS);
        if (r < 0)
                return daemon_fail(cl, put ? "put" : "get", r);
        for (uint32_t i = 0; i < n; i++) {
                if (status[i] == KVC_ITEM_OK)
                        continue;
                if (status[i] == KVC_ITEM_MISS)
                        return child_fail(cl, "get of block %" PRIu32 " missed", first + i);
                if (status[i] == KVC_ITEM_EXISTS)
                        return child_fail(cl, "put of block %" PRIu32 " found it cached already",
                                          first + i);
                if (status[i] == KVC_ITEM_NO_SPACE)
                        return child_fail(cl, "put of block %" PRIu32 ": no space in the cache",
                                          first + i);
                return child_fail(cl, "block %" PRIu32 ": unknown item status %u", first + i,
                                  status[i]);
        }
        if ((uint32_t)r != n)
                return child_fail(cl, "%s: %d of %" PRIu32 " items done", put ? "put" : "get",
                                  r, n);
        if (check && !put) {
                for (uint32_t i = 0; i < n; i++)
                        if (!pattern_check(kvc_pool_slot(cl->pool, g * batch + i), cl->size,
                                           cl->seed, first + i))
                                return child_fail(cl, "block %" PRIu32 ": bytes differ from "
                                                  "what was put", first + i);
        }
        return 0;
}

/* Moves every block, `depth` requests in flight, waiting on the oldest. */
static int run_phase(struct client *cl, bool put, bool check)
{
        uint32_t nreq = (cl->nblocks + cl->o->batch - 1) / cl->o->batch;
        uint32_t sub = 0, done = 0;

        while (done < nreq) {
                while (sub < nreq && sub - done < cl->o->depth) {
                        if (submit(cl, put, check, sub) < 0)
                                return -1;
                        sub++;
                }
                if (complete(cl, put, check, done) < 0)
                        return -1;
                done++;
        }
        return 0;
}

static int delete_all(struct client *cl)
{
        uint32_t max = kvc_max_items(cl->c), deleted = 0;

        for (uint32_t i = 0; i < cl->nblocks; i += max) {
                uint32_t n = cl->nblocks - i < max ? cl->nblocks - i : max;
                int r = kvc_delete(cl->c, cl->ns, cl->keys + i, n, -1);

                if (r < 0)
                        return daemon_fail(cl, "delete", r);
                deleted += (uint32_t)r;
        }
        if (deleted != cl->nblocks)
                return child_fail(cl, "delete removed %" PRIu32 " of %" PRIu32 " blocks", deleted,
                                  cl->nblocks);
        return 0;
}

static int send_msg(struct client *cl, const struct child_msg *m)
{
        /* Below PIPE_BUF: one atomic write. */
        if (write(cl->up, m, sizeof(*m)) != (ssize_t)sizeof(*m))
                return child_fail(cl, "lost the parent: %s", strerror(errno));
        return 0;
}

/* Tells the parent we are ready and waits for everyone's "go". */
static int barrier(struct client *cl)
{
        struct child_msg m = { .type = MSG_READY };
        char go;

        if (send_msg(cl, &m) < 0)
                return -1;
        if (read(cl->down, &go, 1) != 1)
                return child_fail(cl, "lost the parent");
        return 0;
}

static int timed_phase(struct client *cl, bool put)
{
        struct child_msg m = { .type = MSG_RESULT };

        if (barrier(cl) < 0)
                return -1;
        m.start_ns = bench_now_ns();
        if (run_phase(cl, put, false) < 0)
                return -1;
        m.end_ns = bench_now_ns();
        m.bytes = (uint64_t)cl->nblocks * cl->size;
        return send_msg(cl, &m);
}

static int client_setup(struct client *cl)
{
        const struct transfer_opts *o = cl->o;
        struct kvc_geometry g = {
                .layers = 1,
                .kv_heads = 8,
                .head_dim = 128,
                .dtype = KVC_DTYPE_F16,
                .block_tokens = (uint32_t)(cl->size / BENCH_BLOCK_UNIT),
        };
        struct kvc_key seq;
        uint64_t block_bytes = 0;
        char name[64], sz[32];
        size_t slots = (size_t)o->batch * o->depth;
        int err;

        err = kvc_connect(o->socket, "kvdrive-bench", &cl->c);
        if (err < 0)
                return child_fail(cl, "connect: %s", kvc_strerror(err));
        snprintf(name, sizeof(name), "bench-%s", bench_format_size(sz, sizeof(sz), cl->size));
        err = kvc_register_namespace(cl->c, name, &g, &cl->ns, &block_bytes);
        if (err < 0)
                return daemon_fail(cl, "register namespace", err);
        if (block_bytes != cl->size)
                return child_fail(cl, "namespace %s has %" PRIu64 "-byte blocks", name,
                                  block_bytes);
        err = kvc_pool_create(cl->c, (uint32_t)slots, cl->size, &cl->pool);
        if (err < 0)
                return daemon_fail(cl, "create pool", err);
        err = kvc_key_sequence_new(&seq);
        if (err < 0)
                return child_fail(cl, "random sequence: %s", kvc_strerror(err));
        cl->seed = seq.hi ^ seq.lo;
        cl->keys = calloc(cl->nblocks, sizeof(*cl->keys));
        cl->refs = calloc(slots, sizeof(*cl->refs));
        cl->status = calloc(slots, 1);
        cl->ids = calloc(o->depth, sizeof(*cl->ids));
        if (!cl->keys || !cl->refs || !cl->status || !cl->ids)
                return child_fail(cl, "out of memory");
        for (uint32_t i = 0; i < cl->nblocks; i++)
                kvc_key_private(&seq, i, &cl->keys[i]);
        return 0;
}

static void client_cleanup(struct client *cl)
{
        cl->c = kvc_disconnect(cl->c);
        cl->pool = kvc_pool_free(cl->pool);
        free(cl->keys);
        free(cl->refs);
        free(cl->status);
        free(cl->ids);
}

/* The body of one client process. Returns its exit status. */
static int client_main(struct client *cl)
{
        int ret = EXIT_FAILURE;

        if (client_setup(cl) < 0)
                goto out_cleanup;
        /* Untimed: every byte checked, and both sides' pages warmed. */
        if (run_phase(cl, true, true) < 0 || run_phase(cl, false, true) < 0 ||
            delete_all(cl) < 0)
                goto out_cleanup;
        for (uint32_t r = 0; r < cl->o->repeat; r++) {
                if (timed_phase(cl, true) < 0 || timed_phase(cl, false) < 0 ||
                    delete_all(cl) < 0)
                        goto out_cleanup;
        }
        ret = EXIT_SUCCESS;
out_cleanup:
        client_cleanup(cl);
        return ret;
}

/* The memcpy anchor's buffers: src as large as all clients' blocks, dst as
 * large as all clients' pools. */
struct anchor {
        uint8_t *src, *dst;
        uint64_t src_bytes, dst_bytes, chunk;
};

/* Threads start copying together, when the creator says go. */
struct anchor_start {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int go;                         /* 0: wait, 1: copy, -1: leave */
};

struct anchor_share {
        const struct anchor *a;
        struct anchor_start *st;
        uint64_t src_off, src_len;      /* whole chunks */
        uint64_t dst_off, dst_len;      /* whole chunks, > 0 */
        uint64_t start_ns, end_ns;
};

static void *anchor_thread(void *arg)
{
        struct anchor_share *sh = arg;
        const struct anchor *a = sh->a;
        uint64_t d = 0;
        int go;

        pthread_mutex_lock(&sh->st->lock);
        while (!(go = sh->st->go))
                pthread_cond_wait(&sh->st->cond, &sh->st->lock);
        pthread_mutex_unlock(&sh->st->lock);
        if (go < 0)
                return NULL;
        sh->start_ns = bench_now_ns();
        for (uint64_t off = 0; off < sh->src_len; off += a->chunk) {
                memcpy(a->dst + sh->dst_off + d, a->src + sh->src_off + off, a->chunk);
                d += a->chunk;
                if (d == sh->dst_len)
                        d = 0;
        }
        /* The copies are the point: keep the compiler from dropping them. */
        __asm__ volatile("" : : "r"(a->dst) : "memory");
        sh->end_ns = bench_now_ns();
        return NULL;
}

/* One timed copy of the whole source on `threads` threads: GB/s over
 * (latest end - earliest start), or 0.0 if a thread could not start. */
static double anchor_run(const struct anchor *a, uint32_t threads)
{
        uint64_t chunks = a->src_bytes / a->chunk, ring = a->dst_bytes / a->chunk;
        uint64_t start = UINT64_MAX, end = 0, done = 0;
        struct anchor_start st = {
                .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER,
        };
        struct anchor_share sh[64];
        pthread_t tid[64];
        uint32_t started = 0;
        double gbps = 0.0;

        threads = threads < 1 ? 1 : threads > 64 ? 64 : threads;
        if (threads > ring)
                threads = (uint32_t)ring;
        /* The ring warm, as the clients' pools are after the Put that
         * read them; without this the run after the Put starts colder than
         * the next one. */
        memset(a->dst, 0, a->dst_bytes);
        for (uint32_t i = 0; i < threads; i++) {
                uint64_t n = chunks / threads + (i < chunks % threads);
                uint64_t r0 = ring * i / threads, r1 = ring * (i + 1) / threads;

                sh[i] = (struct anchor_share){
                        .a = a, .st = &st,
                        .src_off = done * a->chunk, .src_len = n * a->chunk,
                        .dst_off = r0 * a->chunk, .dst_len = (r1 - r0) * a->chunk,
                };
                done += n;
        }
        for (; started < threads; started++)
                if (pthread_create(&tid[started], NULL, anchor_thread, &sh[started]) != 0)
                        break;
        pthread_mutex_lock(&st.lock);
        st.go = started == threads ? 1 : -1;
        pthread_cond_broadcast(&st.cond);
        pthread_mutex_unlock(&st.lock);
        for (uint32_t i = 0; i < started; i++) {
                pthread_join(tid[i], NULL);
                start = sh[i].start_ns < start ? sh[i].start_ns : start;
                end = sh[i].end_ns > end ? sh[i].end_ns : end;
        }
        if (started == threads)
                gbps = (double)(chunks * a->chunk) / (double)(end > start ? end - start : 1);
        return gbps;
}

static void anchor_unmap(struct anchor *a)
{
        if (a->src && a->src != MAP_FAILED)
                munmap(a->src, a->src_bytes);
        if (a->dst && a->dst != MAP_FAILED)
                munmap(a->dst, a->dst_bytes);
        a->src = a->dst = NULL;
}

/* Maps and pre-faults the buffers, then copies once on each thread count
 * untimed (warm-up). -1 if they cannot be mapped. */
static int anchor_init(struct anchor *a, uint64_t src_bytes, uint64_t dst_bytes, uint64_t chunk,
                       uint32_t threads)
{
        *a = (struct anchor){ .src_bytes = src_bytes, .dst_bytes = dst_bytes, .chunk = chunk };
        a->src = mmap(NULL, src_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        a->dst = mmap(NULL, dst_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        /* The clients forked later must not share them: the anchor's
         * writes would then copy pages on write inside the timed runs. */
        if (a->src == MAP_FAILED || a->dst == MAP_FAILED ||
            madvise(a->src, src_bytes, MADV_DONTFORK) < 0 ||
            madvise(a->dst, dst_bytes, MADV_DONTFORK) < 0) {
                anchor_unmap(a);
                return -1;
        }
        memset(a->src, 0x5a, src_bytes);
        memset(a->dst, 0, dst_bytes);
        if (anchor_run(a, 1) == 0.0 || anchor_run(a, threads) == 0.0) {
                anchor_unmap(a);
                return -1;
        }
        return 0;
}

static bool read_msg(int fd, uint32_t type, struct child_msg *m)
{
        ssize_t n;

        do
                n = read(fd, m, sizeof(*m));
        while (n < 0 && errno == EINTR);
        return n == (ssize_t)sizeof(*m) && m->type == type;
}

/*
 * Forks the clients for one size and drives them through the timed phases:
 * for each repeat, Put then Get, each started together, the memcpy anchor
 * run just before each Get. Fills the per-run GB/s of res. Returns 0, or -1 when a client failed (it said why).
 */
static int run_clients(struct transfer *t, uint64_t size, uint32_t nblocks,
                       const struct anchor *anchor, struct size_result *res)
{
        const struct transfer_opts *o = &t->o;
        unsigned n = o->clients, started = 0;
        pid_t *pids = calloc(n, sizeof(*pids));
        int *up = calloc(n, sizeof(*up)), *down = calloc(n, sizeof(*down));
        int ret = -1;

        if (!pids || !up || !down) {
                fprintf(stderr, "kvdrive-bench: out of memory\n");
                goto out_free;
        }
        fflush(NULL);   /* a child must not flush our buffered output again */
        for (; started < n; started++) {
                int to_parent[2], to_child[2];

                if (pipe2(to_parent, O_CLOEXEC) < 0)
                        goto err_pipe;
                if (pipe2(to_child, O_CLOEXEC) < 0) {
                        close(to_parent[0]);
                        close(to_parent[1]);
                        goto err_pipe;
                }
                pids[started] = fork();
                if (pids[started] < 0) {
                        fprintf(stderr, "kvdrive-bench: fork: %s\n", strerror(errno));
                        close(to_parent[0]);
                        close(to_parent[1]);
                        close(to_child[0]);
                        close(to_child[1]);
                        goto err_kill;
                }
                if (pids[started] == 0) {
                        /* The child keeps a copy of the options and frees
                         * the rest of the parent's heap. */
                        struct transfer_opts copy = *o;
                        struct client cl = {
                                .o = &copy,
                                .idx = started,
                                .size = size,
                                .nblocks = nblocks,
                                .up = to_parent[1],
                                .down = to_child[0],
                        };
                        int status;

                        /* The other clients' pipes are not ours. */
                        for (unsigned i = 0; i < started; i++) {
                                close(up[i]);
                                close(down[i]);
                        }
                        close(to_parent[0]);
                        close(to_child[1]);
                        free(pids);
                        free(up);
                        free(down);
                        copy.sizes = NULL;
                        copy.n_sizes = 0;
                        transfer_free(t);
                        status = client_main(&cl);
                        close(cl.up);
                        close(cl.down);
                        exit(status);
                }
                close(to_parent[1]);
                close(to_child[0]);
                up[started] = to_parent[0];
                down[started] = to_child[1];
        }

        for (uint32_t phase = 0; phase < 2 * o->repeat; phase++) {
                uint64_t start = UINT64_MAX, end = 0, bytes = 0;
                struct child_msg m;

                for (unsigned i = 0; i < n; i++)
                        if (!read_msg(up[i], MSG_READY, &m))
                                goto err_kill;
                if (phase % 2) {
                        /* The clients wait for "g": the anchor has the CPUs. */
                        res->mc_runs[phase / 2] = anchor_run(anchor, 1);
                        res->mc_mt_runs[phase / 2] = anchor_run(anchor, o->workers);
                }
                for (unsigned i = 0; i < n; i++)
                        if (write(down[i], "g", 1) != 1)
                                goto err_kill;
                for (unsigned i = 0; i < n; i++) {
                        if (!read_msg(up[i], MSG_RESULT, &m))
                                goto err_kill;
                        start = m.start_ns < start ? m.start_ns : start;
                        end = m.end_ns > end ? m.end_ns : end;
                        bytes += m.bytes;
                }
                (phase % 2 ? res->get_runs : res->put_runs)[phase / 2] =
                        (double)bytes / (double)(end > start ? end - start : 1);
        }
        ret = 0;
        goto out_reap;

err_pipe:
        fprintf(stderr, "kvdrive-bench: pipe: %s\n", strerror(errno));
err_kill:
        /* A client that failed said why; stop the others. */
        for (unsigned i = 0; i < started; i++)
                kill(pids[i], SIGTERM);
out_reap:
        for (unsigned i = 0; i < started; i++) {
                int status = 0;

                close(up[i]);
                close(down[i]);
                while (waitpid(pids[i], &status, 0) < 0 && errno == EINTR)
                        ;
                if (ret == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                        fprintf(stderr, "kvdrive-bench: client %u failed\n", i);
                        ret = -1;
                }
        }
out_free:
        free(pids);
        free(up);
        free(down);
        return ret;
}

/* Capacity of the host (DRAM) tier, 0 if the daemon reports none. */
static uint64_t host_tier_capacity(const struct kvc_stats *s)
{
        for (uint32_t i = 0; i < s->n_tiers; i++)
                if (strcmp(s->tiers[i].name, "host") == 0 || strcmp(s->tiers[i].name, "dram") == 0)
                        return s->tiers[i].capacity_bytes;
        return 0;
}

/* Asks the daemon for its limits; shrinks o->bytes to half the host tier. */
static int check_daemon(struct transfer_opts *o)
{
        struct kvc_stats *s = NULL;
        kvc_client *c = NULL;
        uint64_t cap, limit;
        char b1[32], b2[32], b3[32];
        int err;

        err = kvc_connect(o->socket, "kvdrive-bench", &c);
        if (err < 0) {
                fprintf(stderr, "kvdrive-bench: cannot reach kvdrived at %s: %s\n",
                        o->socket ? o->socket : "the default socket", kvc_strerror(err));
                return -1;
        }
        if (o->batch > kvc_max_items(c)) {
                fprintf(stderr, "kvdrive-bench: --batch %" PRIu32 " exceeds the daemon's %" PRIu32
                        " items per request\n", o->batch, kvc_max_items(c));
                err = -E2BIG;
                goto out_disconnect;
        }
        err = kvc_stats_get(c, &s);
        if (err < 0) {
                fprintf(stderr, "kvdrive-bench: stats: %s\n", kvc_strerror(err));
                goto out_disconnect;
        }
        o->workers = s->workers ? s->workers : 1;
        cap = host_tier_capacity(s);
        limit = cap / 2 / o->clients;
        if (cap == 0)
                fprintf(stderr, "kvdrive-bench: the daemon reports no host tier; "
                                "--bytes left as given\n");
        else if (o->bytes > limit) {
                fprintf(stderr, "kvdrive-bench: %" PRIu32 " clients x %s exceed half the "
                                "host tier (%s): --bytes shrunk to %s\n",
                        o->clients, bench_format_size(b1, sizeof(b1), o->bytes),
                        bench_format_size(b2, sizeof(b2), cap),
                        bench_format_size(b3, sizeof(b3), limit));
                o->bytes = limit;
        }
        kvc_stats_free(s);
out_disconnect:
        kvc_disconnect(c);
        return err < 0 ? -1 : 0;
}

static int run_size(struct transfer *t, size_t idx)
{
        const struct transfer_opts *o = &t->o;
        uint64_t size = o->sizes[idx];
        struct size_result *res = &t->res[idx];
        uint64_t nblocks = o->bytes / size;
        struct anchor anchor;
        uint64_t ring;
        char sz[32];
        int ret = -1;

        bench_format_size(sz, sizeof(sz), size);
        if (size % BENCH_BLOCK_UNIT || size / BENCH_BLOCK_UNIT > UINT32_MAX) {
                fprintf(stderr, "kvdrive-bench: size %s is not a multiple of 4K\n", sz);
                return -1;
        }
        if (nblocks == 0 || nblocks > UINT32_MAX) {
                fprintf(stderr, "kvdrive-bench: %" PRIu64 " bytes per client hold no %s block\n",
                        o->bytes, sz);
                return -1;
        }
        res->size = size;
        res->bytes_per_client = nblocks * size;
        res->put_runs = calloc(o->repeat, sizeof(double));
        res->get_runs = calloc(o->repeat, sizeof(double));
        res->mc_runs = calloc(o->repeat, sizeof(double));
        res->mc_mt_runs = calloc(o->repeat, sizeof(double));
        if (!res->put_runs || !res->get_runs || !res->mc_runs || !res->mc_mt_runs)
                return -1;
        ring = (uint64_t)o->batch * o->depth;
        if (ring > nblocks)
                ring = nblocks;
        if (anchor_init(&anchor, o->clients * res->bytes_per_client, o->clients * ring * size,
                        size, o->workers) < 0) {
                fprintf(stderr, "kvdrive-bench: cannot map or copy the memcpy buffers\n");
                return -1;
        }
        if (run_clients(t, size, (uint32_t)nblocks, &anchor, res) < 0)
                goto out_unmap;
        res->put_gbps = bench_median(res->put_runs, o->repeat);
        res->get_gbps = bench_median(res->get_runs, o->repeat);
        res->memcpy_gbps = bench_median(res->mc_runs, o->repeat);
        res->memcpy_mt_gbps = bench_median(res->mc_mt_runs, o->repeat);
        ret = 0;
out_unmap:
        anchor_unmap(&anchor);
        return ret;
}

static void print_table(const struct transfer_opts *o, const struct size_result *res)
{
        char sz[32];

        printf("transfer: %" PRIu32 " clients, batch %" PRIu32 ", depth %" PRIu32
               ", medians of %" PRIu32 " repeats; memcpy on 1 and on %" PRIu32
               " threads (the daemon's workers)\n",
               o->clients, o->batch, o->depth, o->repeat, o->workers);
        printf("%-6s %12s %10s %10s %10s %10s %10s\n", "size", "bytes/client", "put GB/s",
               "get GB/s", "memcpy 1", "memcpy N", "get/N");
        for (size_t i = 0; i < o->n_sizes; i++) {
                const struct size_result *r = &res[i];

                printf("%-6s %12" PRIu64 " %10.2f %10.2f %10.2f %10.2f %10.2f\n",
                       bench_format_size(sz, sizeof(sz), r->size), r->bytes_per_client,
                       r->put_gbps, r->get_gbps, r->memcpy_gbps, r->memcpy_mt_gbps,
                       r->memcpy_mt_gbps > 0 ? r->get_gbps / r->memcpy_mt_gbps : 0.0);
        }
}

static json_t *runs_json(const double *v, uint32_t n)
{
        json_t *a = json_array();

        for (uint32_t i = 0; a && i < n; i++) {
                if (json_array_append_new(a, json_real(v[i])) < 0) {
                        json_decref(a);
                        return NULL;
                }
        }
        return a;
}

static int print_json(const struct transfer_opts *o, const struct size_result *res)
{
        json_t *results = json_array(), *root;
        int ret = -1;

        for (size_t i = 0; results && i < o->n_sizes; i++) {
                const struct size_result *r = &res[i];

                if (json_array_append_new(
                            results,
                            json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:f, s:o, s:o, s:o, s:o}",
                                      "size", (json_int_t)r->size,
                                      "bytes_per_client", (json_int_t)r->bytes_per_client,
                                      "put_gbps", r->put_gbps,
                                      "get_gbps", r->get_gbps,
                                      "memcpy_gbps", r->memcpy_gbps,
                                      "get_memcpy_ratio",
                                      r->memcpy_gbps > 0 ? r->get_gbps / r->memcpy_gbps : 0.0,
                                      "memcpy_mt_gbps", r->memcpy_mt_gbps,
                                      "get_memcpy_mt_ratio",
                                      r->memcpy_mt_gbps > 0 ? r->get_gbps / r->memcpy_mt_gbps : 0.0,
                                      "put_gbps_runs", runs_json(r->put_runs, o->repeat),
                                      "get_gbps_runs", runs_json(r->get_runs, o->repeat),
                                      "memcpy_gbps_runs", runs_json(r->mc_runs, o->repeat),
                                      "memcpy_mt_gbps_runs", runs_json(r->mc_mt_runs, o->repeat))) < 0) {
                        json_decref(results);
                        return -1;
                }
        }
        root = json_pack("{s:i, s:s, s:I, s:I, s:I, s:I, s:I, s:o}",
                         "schema", JSON_SCHEMA,
                         "command", "transfer",
                         "clients", (json_int_t)o->clients,
                         "batch", (json_int_t)o->batch,
                         "depth", (json_int_t)o->depth,
                         "repeat", (json_int_t)o->repeat,
                         "workers", (json_int_t)o->workers,
                         "results", results);
        if (root && json_dumpf(root, stdout, JSON_INDENT(2)) == 0 && putchar('\n') != EOF)
                ret = 0;
        json_decref(root);
        return ret;
}

static int parse_opts(int argc, char **argv, struct transfer_opts *o)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "clients", required_argument, NULL, 'c' },
                { "sizes", required_argument, NULL, 'z' },
                { "bytes", required_argument, NULL, 'b' },
                { "batch", required_argument, NULL, 'B' },
                { "depth", required_argument, NULL, 'd' },
                { "repeat", required_argument, NULL, 'r' },
                { "json", no_argument, NULL, 'j' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *sizes = "64K,1M";
        uint64_t v;
        int c, err = 0;

        while ((c = getopt_long(argc, argv, "s:c:z:b:B:d:r:jh", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        o->socket = optarg;
                        break;
                case 'c':
                        err = bench_parse_uint(optarg, 1, 1024, &v);
                        o->clients = (uint32_t)v;
                        break;
                case 'z':
                        sizes = optarg;
                        break;
                case 'b':
                        err = kvd_parse_size(optarg, &o->bytes);
                        break;
                case 'B':
                        err = bench_parse_uint(optarg, 1, 1u << 20, &v);
                        o->batch = (uint32_t)v;
                        break;
                case 'd':
                        err = bench_parse_uint(optarg, 1, 1024, &v);
                        o->depth = (uint32_t)v;
                        break;
                case 'r':
                        err = bench_parse_uint(optarg, 1, 1000, &v);
                        o->repeat = (uint32_t)v;
                        break;
                case 'j':
                        o->json = true;
                        break;
                case 'h':
                        usage(stdout);
                        exit(EXIT_SUCCESS);
                default:
                        usage(stderr);
                        return -1;
                }
                if (err < 0) {
                        fprintf(stderr, "kvdrive-bench transfer: bad value '%s' for -%c\n",
                                optarg, c);
                        return -1;
                }
        }
        if (optind != argc) {
                fprintf(stderr, "kvdrive-bench transfer: unexpected '%s'\n", argv[optind]);
                return -1;
        }
        if (bench_parse_sizes(sizes, &o->sizes, &o->n_sizes) < 0) {
                fprintf(stderr, "kvdrive-bench transfer: bad --sizes '%s'\n", sizes);
                return -1;
        }
        return 0;
}

int bench_transfer(int argc, char **argv)
{
        struct transfer t = {
                .o = {
                        .clients = 2,
                        .bytes = 32ull << 20,
                        .batch = 32,
                        .depth = 4,
                        .repeat = 5,
                },
        };
        int ret = EXIT_FAILURE;

        if (parse_opts(argc, argv, &t.o) < 0) {
                ret = BENCH_EXIT_USAGE;
                goto out_free;
        }
        /* A client that died must not kill us on the next "go". */
        signal(SIGPIPE, SIG_IGN);
        if (check_daemon(&t.o) < 0)
                goto out_free;
        t.res = calloc(t.o.n_sizes, sizeof(*t.res));
        if (!t.res)
                goto out_free;
        for (size_t i = 0; i < t.o.n_sizes; i++)
                if (run_size(&t, i) < 0)
                        goto out_free;
        if (!t.o.json)
                print_table(&t.o, t.res);
        else if (print_json(&t.o, t.res) < 0)
                goto out_free;
        ret = EXIT_SUCCESS;
out_free:
        transfer_free(&t);
        return ret;
}
