/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench ssd: Get of blocks that live only on the daemon's SSD tier
 * (host tier cold), at several queue depths, next to fio reading the same
 * file system with O_DIRECT and io_uring at the same block size and depth.
 *
 * The data set is stored with durable Puts (so every block is on SSD) and is
 * several times the host tier; the oldest blocks (the cold set, at least
 * twice the host tier) have then left host memory. The timed Gets read the
 * cold set in order, pass after pass, from where the last measurement
 * stopped: the host tier is LRU, so the block read next is always the one
 * read longest ago, long evicted. The host hits and SSD reads counted during
 * each measurement show it (0 hits; one SSD read per block).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "kvdrive/client.h"
#include "size.h"

#define MAX_DEPTHS 8
#define PUT_BATCH 32u

struct ssd_opts {
        const char *socket;
        uint64_t *sizes;
        size_t n_sizes;
        uint64_t depths[MAX_DEPTHS];
        size_t n_depths;
        uint64_t bytes;         /* data set per size; 0: 4 x the host tier */
        uint64_t read_bytes;    /* read per measurement */
        uint64_t batch;         /* blocks per Get request */
        uint64_t repeat;        /* measurements per depth; medians reported */
        const char *fio_dir;
        bool json;
        bool fp8_values;        /* --values fp8 */
};

#define MAX_REPEAT 9

struct ssd_row {
        uint64_t size, depth, bytes_read;      /* bytes_read: per measurement */
        double kvd_gbps, fio_gbps, ratio;       /* medians */
        double kvd_min, kvd_max, fio_min, fio_max, ratio_min, ratio_max;
        double kvd_runs[MAX_REPEAT], fio_runs[MAX_REPEAT], ratio_runs[MAX_REPEAT];
        uint64_t host_hits, promotions, ssd_reads;      /* over all the measurements */
};

static void usage(FILE *f)
{
        fprintf(f,
                "Usage: kvdrive-bench ssd [options]\n\n"
                "Get of blocks only on the SSD tier (host cold) at several queue depths,\n"
                "beside fio (O_DIRECT, io_uring, same block size and depth) on the same file system.\n\n"
                "  -s, --socket PATH   daemon socket (default: $KVDRIVE_SOCKET or the system one)\n"
                "  -z, --sizes LIST    block sizes (default 64K,1M)\n"
                "  -q, --depths LIST   blocks in flight (default 1,8,32; at most 64)\n"
                "  -B, --batch N       blocks per Get request, at most the depth (default 8)\n"
                "  -r, --repeat R      measurements per depth, interleaved; medians (default 3)\n"
                "  -R, --read SIZE     bytes read per measurement (default 128M)\n"
                "      --full          the full measurement: --read 1G --repeat 5 (unless given)\n"
                "  -b, --bytes SIZE    data set per size (default: 4 x the host tier)\n"
                "  -f, --fio-dir DIR   run fio in DIR (the daemon's ssd-dir); no fio without it\n"
                "  -V, --values KIND   random (default: any bits), or fp8: f16 values e4m3 holds exactly,\n"
                "                      so that a daemon with ssd-codec fp8 serves them bit for bit\n"
                "  -j, --json          print one JSON object\n"
                "  -h, --help          this help\n");
}

static uint64_t splitmix(uint64_t *x)
{
        uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static bool fill_fp8;

/* Random bits; or (fill_fp8) four random f16 lanes per word that e4m3
 * holds exactly: sign, 3 mantissa bits, exponent 2^-6..2^1 (normal in
 * both). */
static void fill(void *p, uint64_t bytes, uint64_t seed)
{
        uint64_t *w = p, x = seed;

        for (uint64_t i = 0; i < bytes / 8; i++) {
                uint64_t r = splitmix(&x);

                w[i] = fill_fp8 ? (r & 0x8380838083808380ull) |
                                          ((((r >> 10) & 0x0007000700070007ull) + 0x0009000900090009ull) << 10)
                                : r;
        }
}

static int tier_stats(kvc_client *c, const char *name, struct kvc_tier_stats *ret)
{
        struct kvc_stats *s = NULL;
        int r = kvc_stats_get(c, &s);

        if (r < 0)
                return r;
        r = -ENOENT;
        for (uint32_t i = 0; i < s->n_tiers; i++)
                if (strcmp(s->tiers[i].name, name) == 0) {
                        *ret = s->tiers[i];
                        r = 0;
                }
        kvc_stats_free(s);
        return r;
}

/* fio's bandwidth in GB/s reading io_bytes of a file_bytes file in dir
 * (as big as the cold set), or a negative error. Sequential, as the daemon's
 * reads of blocks stored in a row are, wrapping round the file as the
 * daemon's passes wrap round the cold set. */
static double run_fio(const char *dir, uint64_t file_bytes, uint64_t bs, uint64_t depth, uint64_t io_bytes)
{
        char cmd[1024], *out = NULL;
        size_t len = 0, cap = 0;
        json_error_t jerr;
        json_t *root, *jobs;
        double gbps = -1;
        FILE *p;

        snprintf(cmd, sizeof(cmd),
                 "fio --name=kvdrive --directory='%s' --filename=kvdrive-bench-fio.dat --filesize=%" PRIu64
                 " --io_size=%" PRIu64 " --bs=%" PRIu64 " --iodepth=%" PRIu64
                 " --rw=read --ioengine=io_uring --direct=1 --numjobs=1 --output-format=json 2>/dev/null",
                 dir, file_bytes, io_bytes, bs, depth);
        p = popen(cmd, "r");
        if (!p)
                return -errno;
        for (;;) {
                if (len + 4096 > cap) {
                        char *n = realloc(out, cap = cap ? cap * 2 : 65536);

                        if (!n)
                                break;
                        out = n;
                }
                size_t k = fread(out + len, 1, cap - len - 1, p);

                if (k == 0)
                        break;
                len += k;
        }
        if (pclose(p) != 0 || !out) {
                free(out);
                return -EIO;
        }
        out[len] = '\0';
        root = json_loads(strchr(out, '{') ? strchr(out, '{') : out, 0, &jerr);
        free(out);
        jobs = root ? json_object_get(root, "jobs") : NULL;
        if (jobs && json_array_size(jobs) > 0) {
                json_t *bw = json_object_get(json_object_get(json_array_get(jobs, 0), "read"), "bw_bytes");

                if (json_is_number(bw))
                        gbps = json_number_value(bw) / 1e9;
        }
        json_decref(root);
        return gbps;
}

/* The median of runs[0..n) (left in order), its least and greatest. */
static double summary(const double *runs, size_t n, double *ret_min, double *ret_max)
{
        double v[MAX_REPEAT];

        memcpy(v, runs, sizeof(double) * n);
        *ret_min = *ret_max = n ? runs[0] : 0;
        for (size_t i = 1; i < n; i++) {
                *ret_min = runs[i] < *ret_min ? runs[i] : *ret_min;
                *ret_max = runs[i] > *ret_max ? runs[i] : *ret_max;
        }
        return bench_median(v, n);
}

/* Stores n blocks durably, batch by batch; block i's bytes come from seed+i. */
static int store(kvc_client *c, uint32_t ns, kvc_pool *pool, const struct kvc_key *keys, uint32_t n,
                 uint64_t size, uint64_t seed)
{
        struct kvc_block_ref refs[PUT_BATCH];
        uint8_t st[PUT_BATCH];

        for (uint32_t first = 0; first < n; first += PUT_BATCH) {
                uint32_t k = n - first < PUT_BATCH ? n - first : PUT_BATCH;
                uint64_t id;
                int r;

                for (uint32_t j = 0; j < k; j++) {
                        fill(kvc_pool_slot(pool, j), size, seed + first + j);
                        refs[j] = (struct kvc_block_ref){ keys[first + j], 0, j, 0 };
                }
                r = kvc_put_submit_flags(c, ns, pool, refs, k, KVC_PUT_DURABLE, st, &id);
                if (r >= 0)
                        r = kvc_wait(c, id, -1);
                if (r < 0)
                        return r;
                if ((uint32_t)r != k) {
                        fprintf(stderr, "kvdrive-bench: %u of %u durable Puts failed (is the SSD tier full?)\n",
                                k - (uint32_t)r, k);
                        return -EIO;
                }
        }
        return 0;
}

/* Gets n blocks from block first on, wrapping at block wrap, keeping
 * `depth` blocks in flight in requests of `batch` blocks; checks every byte
 * of the first and the last requests' blocks. Returns seconds, or a
 * negative error. */
static double read_range(kvc_client *c, uint32_t ns, kvc_pool *pool, const struct kvc_key *keys, uint32_t first,
                         uint32_t n, uint32_t wrap, uint32_t depth, uint32_t batch, uint64_t size, uint64_t seed)
{
        uint32_t reqs = depth / batch, next = 0, done = 0;
        uint64_t *ids = calloc(reqs, sizeof(uint64_t)), t0, t1;
        uint32_t *start = calloc(reqs, sizeof(uint32_t)), *count = calloc(reqs, sizeof(uint32_t));
        struct kvc_block_ref *refs = calloc(batch, sizeof(*refs));
        uint8_t *st = calloc(depth, 1);
        void *expect = malloc(size);
        double ret = -ENOMEM;

        if (!ids || !start || !count || !refs || !st || !expect)
                goto out;
        t0 = bench_now_ns();
        /* Reap the oldest request, refill its slots, round and round. */
        for (uint32_t s = 0; done < n; s++) {
                uint32_t w = s % reqs;
                int r;

                if (ids[w]) {
                        r = kvc_wait(c, ids[w], -1);
                        ids[w] = 0;
                        if (r != (int)count[w]) {
                                fprintf(stderr, "kvdrive-bench: Get of blocks %u+%u: %s\n", start[w] % wrap, count[w],
                                        r < 0 ? kvc_strerror(r) : "miss");
                                ret = -EIO;
                                goto out;
                        }
                        done += count[w];
                        if (done <= depth || done == n) { /* spot checks: first and last requests */
                                for (uint32_t j = 0; j < count[w]; j++) {
                                        fill(expect, size, seed + (start[w] + j) % wrap);
                                        if (memcmp(expect, kvc_pool_slot(pool, w * batch + j), size) != 0) {
                                                fprintf(stderr, "kvdrive-bench: block %u came back different\n",
                                                        (start[w] + j) % wrap);
                                                ret = -EIO;
                                                goto out;
                                        }
                                }
                        }
                }
                if (next < n) {
                        count[w] = n - next < batch ? n - next : batch;
                        start[w] = first + next;
                        for (uint32_t j = 0; j < count[w]; j++)
                                refs[j] = (struct kvc_block_ref){ keys[(first + next + j) % wrap], 0, w * batch + j, 0 };
                        next += count[w];
                        r = kvc_get_submit(c, ns, pool, refs, count[w], st + w * batch, &ids[w]);
                        if (r < 0) {
                                ret = r;
                                goto out;
                        }
                }
        }
        t1 = bench_now_ns();
        ret = (double)(t1 - t0) / 1e9;
out:
        free(ids);
        free(start);
        free(count);
        free(refs);
        free(st);
        free(expect);
        return ret;
}

static int run_size(kvc_client *c, const struct ssd_opts *o, uint64_t size, uint64_t host_cap,
                    struct ssd_row *rows)
{
        const struct kvc_geometry g = { 1, 8, 128, KVC_DTYPE_F16, (uint32_t)(size / 4096) };
        uint64_t bytes = o->bytes ? o->bytes : 4 * host_cap, seed;
        uint32_t n = (uint32_t)(bytes / size), cold, per, ns, maxd = 1, cursor = 0;
        struct kvc_key *keys = calloc(n ? n : 1, sizeof(*keys)), seq;
        kvc_pool *pool = NULL;
        char name[64], sz[32];
        int r;

        for (size_t d = 0; d < o->n_depths; d++)
                maxd = o->depths[d] > maxd ? (uint32_t)o->depths[d] : maxd;
        if (!keys)
                return -ENOMEM;
        /* Blocks beyond the host tier's worth (and a margin) are cold; the
         * passes over them miss the host tier only if they are more than it
         * holds: twice, for room. */
        cold = n > (uint32_t)(host_cap / size) + 8 ? n - (uint32_t)(host_cap / size) - 8 : 0;
        per = (uint32_t)(o->read_bytes / size);
        if ((uint64_t)cold * size < 2 * host_cap || per < 8) {
                fprintf(stderr, "kvdrive-bench: --bytes %" PRIu64 " leaves fewer cold blocks of %s than twice a "
                        "%" PRIu64 "-byte host tier (or --read is under 8 blocks)\n", bytes,
                        bench_format_size(sz, sizeof(sz), size), host_cap);
                free(keys);
                return -EINVAL;
        }
        snprintf(name, sizeof(name), "bench-ssd-%s", bench_format_size(sz, sizeof(sz), size));
        r = kvc_key_sequence_new(&seq);
        if (r == 0)
                r = kvc_register_namespace(c, name, &g, &ns, NULL);
        if (r == 0)
                r = kvc_pool_create(c, maxd > PUT_BATCH ? maxd : PUT_BATCH, size, &pool);
        if (r < 0)
                goto out;
        for (uint32_t i = 0; i < n; i++)
                kvc_key_private(&seq, i, &keys[i]);
        seed = seq.lo;
        r = store(c, ns, pool, keys, n, size, seed);
        if (r < 0)
                goto out;
        memset(rows, 0, sizeof(*rows) * o->n_depths);
        /* Repeats interleave depths, and kvdrive with fio, so that a slow
         * spell of a shared disk hits both sides alike. */
        for (uint32_t rep = 0; rep < o->repeat; rep++) {
                for (size_t d = 0; d < o->n_depths; d++) {
                        struct kvc_tier_stats h0 = { 0 }, h1 = { 0 }, s0 = { 0 }, s1 = { 0 };
                        struct ssd_row *row = &rows[d];
                        uint32_t depth = (uint32_t)o->depths[d], batch;
                        double secs, fio = -1;

                        batch = depth < o->batch ? depth : (uint32_t)o->batch;
                        depth = depth / batch * batch;
                        r = tier_stats(c, "host", &h0);
                        if (r == 0)
                                r = tier_stats(c, "ssd", &s0);
                        if (r < 0)
                                goto out;
                        secs = read_range(c, ns, pool, keys, cursor, per, cold, depth, batch, size, seed);
                        if (secs < 0) {
                                r = (int)secs;
                                goto out;
                        }
                        cursor = (uint32_t)(((uint64_t)cursor + per) % cold);
                        tier_stats(c, "host", &h1);
                        tier_stats(c, "ssd", &s1);
                        if (o->fio_dir)
                                fio = run_fio(o->fio_dir, (uint64_t)cold * size, size, o->depths[d],
                                              (uint64_t)per * size);
                        row->size = size;
                        row->depth = o->depths[d];
                        row->bytes_read = (uint64_t)per * size;
                        row->host_hits += h1.hits - h0.hits;
                        row->promotions += s1.promotions - s0.promotions;
                        row->ssd_reads += s1.reads - s0.reads;
                        row->kvd_runs[rep] = (double)per * (double)size / secs / 1e9;
                        row->fio_runs[rep] = fio;
                        row->ratio_runs[rep] = fio > 0 ? row->kvd_runs[rep] / fio : 0;
                }
        }
        for (size_t d = 0; d < o->n_depths; d++) {
                struct ssd_row *w = &rows[d];

                w->kvd_gbps = summary(w->kvd_runs, o->repeat, &w->kvd_min, &w->kvd_max);
                w->fio_gbps = summary(w->fio_runs, o->repeat, &w->fio_min, &w->fio_max);
                w->ratio = summary(w->ratio_runs, o->repeat, &w->ratio_min, &w->ratio_max);
        }
out:
        if (r >= 0 || r == -EIO) {
                for (uint32_t first = 0; first < n; first += 1024)
                        kvc_delete(c, ns, keys + first, n - first < 1024 ? n - first : 1024, -1);
        }
        kvc_pool_free(pool);
        free(keys);
        return r;
}

static int parse(int argc, char **argv, struct ssd_opts *o)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' }, { "sizes", required_argument, NULL, 'z' },
                { "depths", required_argument, NULL, 'q' }, { "bytes", required_argument, NULL, 'b' },
                { "fio-dir", required_argument, NULL, 'f' }, { "json", no_argument, NULL, 'j' },
                { "batch", required_argument, NULL, 'B' }, { "repeat", required_argument, NULL, 'r' },
                { "read", required_argument, NULL, 'R' },   { "full", no_argument, NULL, 'F' },
                { "values", required_argument, NULL, 'V' }, { "help", no_argument, NULL, 'h' },
                {},
        };
        const char *sizes = "64K,1M", *depths = "1,8,32";
        bool full = false;
        int c;

        o->batch = 8;
        while ((c = getopt_long(argc, argv, "s:z:q:b:B:r:R:f:V:jh", opts, NULL)) != -1) {
                switch (c) {
                case 'R':
                        if (kvd_parse_size(optarg, &o->read_bytes) < 0 || o->read_bytes == 0) {
                                fprintf(stderr, "kvdrive-bench: bad --read '%s'\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'F': full = true; break;
                case 'V':
                        if (strcmp(optarg, "fp8") && strcmp(optarg, "random")) {
                                fprintf(stderr, "kvdrive-bench: bad --values '%s' (random, fp8)\n", optarg);
                                return -EINVAL;
                        }
                        o->fp8_values = strcmp(optarg, "fp8") == 0;
                        break;
                case 's': o->socket = optarg; break;
                case 'z': sizes = optarg; break;
                case 'q': depths = optarg; break;
                case 'b':
                        if (kvd_parse_size(optarg, &o->bytes) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --bytes '%s'\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'f': o->fio_dir = optarg; break;
                case 'r':
                        if (bench_parse_uint(optarg, 1, MAX_REPEAT, &o->repeat) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --repeat '%s' (1-%d)\n", optarg, MAX_REPEAT);
                                return -EINVAL;
                        }
                        break;
                case 'B':
                        if (bench_parse_uint(optarg, 1, 64, &o->batch) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --batch '%s' (1-64)\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'j': o->json = true; break;
                case 'h': usage(stdout); return 1;
                default: usage(stderr); return -EINVAL;
                }
        }
        if (!o->read_bytes)
                o->read_bytes = full ? 1ull << 30 : 128ull << 20;
        if (!o->repeat)
                o->repeat = full ? 5 : 3;
        if (bench_parse_sizes(sizes, &o->sizes, &o->n_sizes) < 0) {
                fprintf(stderr, "kvdrive-bench: bad --sizes '%s'\n", sizes);
                return -EINVAL;
        }
        for (size_t i = 0; i < o->n_sizes; i++)
                if (o->sizes[i] % 4096 || o->sizes[i] == 0) {
                        fprintf(stderr, "kvdrive-bench: sizes must be multiples of 4K\n");
                        return -EINVAL;
                }
        {
                char *copy = strdup(depths), *save = NULL;

                for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                        if (o->n_depths == MAX_DEPTHS || bench_parse_uint(t, 1, 64, &o->depths[o->n_depths]) < 0) {
                                fprintf(stderr, "kvdrive-bench: bad --depths '%s' (1-64, at most %d)\n", depths,
                                        MAX_DEPTHS);
                                free(copy);
                                return -EINVAL;
                        }
                        o->n_depths++;
                }
                free(copy);
        }
        return o->n_depths ? 0 : -EINVAL;
}

int bench_ssd(int argc, char **argv)
{
        struct ssd_opts o = { 0 };
        struct ssd_row rows[MAX_DEPTHS];
        struct kvc_tier_stats host = { 0 }, ssd = { 0 };
        json_t *jrows = NULL;
        kvc_client *c = NULL;
        int r, ret = EXIT_FAILURE;
        char sz[32];

        r = parse(argc, argv, &o);
        if (r != 0) {
                free(o.sizes);
                return r > 0 ? EXIT_SUCCESS : BENCH_EXIT_USAGE;
        }
        fill_fp8 = o.fp8_values;
        r = kvc_connect(o.socket, "kvdrive-bench ssd", &c);
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench: cannot reach kvdrived: %s\n", kvc_strerror(r));
                goto out;
        }
        if (tier_stats(c, "host", &host) < 0 || tier_stats(c, "ssd", &ssd) < 0) {
                fprintf(stderr, "kvdrive-bench: the daemon runs no SSD tier (start it with --ssd-dir and --ssd-bytes)\n");
                goto out;
        }
        if (!o.fio_dir)
                fprintf(stderr, "kvdrive-bench: no --fio-dir: fio is not run\n");
        if (o.json)
                jrows = json_array();
        else
                printf("ssd: host tier %" PRIu64 " MiB (cold for these reads), one client, Gets of up to %" PRIu64
                       " blocks\n"
                       "medians of %" PRIu64 " interleaved runs of %" PRIu64 " MiB each, [least-greatest]\n"
                       "%-6s %5s %8s %-18s %-18s %-18s %9s %9s\n", host.capacity_bytes >> 20, o.batch, o.repeat,
                       o.read_bytes >> 20, "size", "depth", "MiB/run", "kvdrive GB/s", "fio GB/s", "ratio",
                       "host hits", "SSD reads");
        for (size_t i = 0; i < o.n_sizes; i++) {
                r = run_size(c, &o, o.sizes[i], host.capacity_bytes, rows);
                if (r < 0) {
                        fprintf(stderr, "kvdrive-bench: size %s: %s\n", bench_format_size(sz, sizeof(sz), o.sizes[i]),
                                kvc_strerror(r));
                        goto out;
                }
                for (size_t d = 0; d < o.n_depths; d++) {
                        const struct ssd_row *w = &rows[d];
                        double ratio = w->ratio;

                        if (jrows)
                                json_array_append_new(jrows, json_pack(
                                        "{s:I, s:I, s:I, s:I, s:f, s:[f,f], s:f, s:[f,f], s:f, s:[f,f], s:I, s:I, s:I}",
                                        "size", (json_int_t)w->size, "depth", (json_int_t)w->depth,
                                        "bytes_read", (json_int_t)w->bytes_read, "runs", (json_int_t)o.repeat,
                                        "kvdrive_gbps", w->kvd_gbps, "kvdrive_range", w->kvd_min, w->kvd_max,
                                        "fio_gbps", w->fio_gbps, "fio_range", w->fio_min, w->fio_max,
                                        "ratio", ratio, "ratio_range", w->ratio_min, w->ratio_max,
                                        "host_hits", (json_int_t)w->host_hits, "promotions", (json_int_t)w->promotions,
                                        "ssd_reads", (json_int_t)w->ssd_reads));
                        else
                                printf("%-6s %5" PRIu64 " %8" PRIu64 " %5.2f [%4.2f-%4.2f]  %5.2f [%4.2f-%4.2f]  "
                                       "%5.2f [%4.2f-%4.2f]  %9" PRIu64 " %9" PRIu64 "\n",
                                       bench_format_size(sz, sizeof(sz), w->size), w->depth, w->bytes_read >> 20,
                                       w->kvd_gbps, w->kvd_min, w->kvd_max, w->fio_gbps, w->fio_min, w->fio_max,
                                       ratio, w->ratio_min, w->ratio_max, w->host_hits, w->ssd_reads);
                }
        }
        if (jrows) {
                json_t *root = json_pack("{s:s, s:I, s:o}", "bench", "ssd", "host_capacity_bytes",
                                         (json_int_t)host.capacity_bytes, "rows", jrows);

                jrows = NULL;
                json_dumpf(root, stdout, JSON_INDENT(2));
                putchar('\n');
                json_decref(root);
        }
        ret = EXIT_SUCCESS;
out:
        json_decref(jrows);
        kvc_disconnect(c);
        free(o.sizes);
        return ret;
}
