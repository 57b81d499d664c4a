/* SPDX-License-Identifier: MIT */
/*
 * Writes the seed corpus of every fuzz target into DIR/<target>/ (run it
 * from the repository root: build/tests/fuzz/fuzz-gen-corpus
 * tests/fuzz/corpus). Seeds are valid inputs: frames of every request type,
 * client sessions that use each handler, SSD headers as the tier writes
 * them. The fuzzers mutate from there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "frame.h"
#include "fuzz.h"
#include "kvdrive.pb-c.h"
#include "slot.h"
#include "ssd-checkpoint.h"
#include "ssd-journal.h"

#define NS_NAME "fuzz-model"

static const char *outdir;

static void write_file(const char *target, const char *name, const void *buf, size_t n)
{
        char path[512];
        FILE *f;

        snprintf(path, sizeof(path), "%s/%s", outdir, target);
        if (mkdir(path, 0755) < 0 && errno != EEXIST) {
                perror(path);
                exit(1);
        }
        snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
        f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, n, f) != n || fclose(f) != 0) {
                perror(path);
                exit(1);
        }
}

/* ---- requests ---------------------------------------------------------- */

/* A packed, framed request into buf; its length. */
static size_t frame(const Kvdrive__Request *req, uint8_t *buf)
{
        size_t n = kvdrive__request__pack(req, buf + KVD_FRAME_HDR);

        kvd_frame_put_header(buf, (uint32_t)n);
        return n + KVD_FRAME_HDR;
}

static Kvdrive__Geometry geom = KVDRIVE__GEOMETRY__INIT;
static Kvdrive__BlockRef refs[4], *refp[4];
static Kvdrive__Key keys[4], *keyp[4];
static Kvdrive__BlockScore scores[4], *scorep[4];

static void init_items(void)
{
        geom.layers = 2;
        geom.kv_heads = 1;
        geom.head_dim = 64;
        geom.dtype = KVDRIVE__DTYPE__DTYPE_F16;
        geom.block_tokens = 16;         /* 4 KiB blocks */
        for (unsigned i = 0; i < 4; i++) {
                kvdrive__block_ref__init(&refs[i]);
                refs[i].key_hi = 0x1000 + i / 2;
                refs[i].key_lo = 0x2000 + i / 2;
                refs[i].layer = i % 2;
                refs[i].slot = i;
                refp[i] = &refs[i];
                kvdrive__key__init(&keys[i]);
                keys[i].hi = 0x1000 + i;
                keys[i].lo = 0x2000 + i;
                keyp[i] = &keys[i];
                kvdrive__block_score__init(&scores[i]);
                scores[i].key_hi = refs[i].key_hi;
                scores[i].key_lo = refs[i].key_lo;
                scores[i].layer = refs[i].layer;
                scores[i].mass = 0.25f;
                scorep[i] = &scores[i];
        }
}

enum req_kind {
        R_HELLO, R_NAMESPACE, R_POOL, R_COUNTERS, R_PUT, R_PUT_DURABLE, R_PUT_COUNTED, R_GET, R_GET_HINT,
        R_LOOKUP, R_DELETE, R_DELETE_ALL, R_STATS, R_PREFETCH, R_SCORES, R_DROP, R_COUNT,
};

static const char *const req_names[R_COUNT] = {
        "hello", "namespace", "pool", "counters", "put", "put-durable", "put-counted", "get", "get-hint",
        "lookup", "delete", "delete-all", "stats", "prefetch", "scores", "drop-namespace",
};

/* Builds request kind (id) framed into buf; *ret_flags: its chunk flags. */
static size_t build(enum req_kind kind, uint64_t id, uint8_t *buf, uint8_t *ret_flags)
{
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Hello hello = KVDRIVE__HELLO__INIT;
        Kvdrive__RegisterNamespace rn = KVDRIVE__REGISTER_NAMESPACE__INIT;
        Kvdrive__RegisterPool rp = KVDRIVE__REGISTER_POOL__INIT;
        Kvdrive__RegisterCounters rc = KVDRIVE__REGISTER_COUNTERS__INIT;
        Kvdrive__Transfer tr = KVDRIVE__TRANSFER__INIT;
        Kvdrive__Lookup lk = KVDRIVE__LOOKUP__INIT;
        Kvdrive__Delete del = KVDRIVE__DELETE__INIT;
        Kvdrive__Stats st = KVDRIVE__STATS__INIT;
        Kvdrive__Prefetch pf = KVDRIVE__PREFETCH__INIT;
        Kvdrive__Scores sc = KVDRIVE__SCORES__INIT;
        Kvdrive__DropNamespace dn = KVDRIVE__DROP_NAMESPACE__INIT;
        Kvdrive__BlockRef counted[4];
        Kvdrive__BlockRef *countedp[4];

        *ret_flags = 0;
        req.id = id;
        tr.ns_id = 0;
        tr.pool_id = 0;
        tr.n_items = 4;
        tr.items = refp;
        switch (kind) {
        case R_HELLO:
                hello.version = KVD_PROTO_VERSION;
                hello.client_name = "fuzz";
                req.body_case = KVDRIVE__REQUEST__BODY_HELLO;
                req.hello = &hello;
                break;
        case R_NAMESPACE:
                rn.name.data = (uint8_t *)NS_NAME;
                rn.name.len = strlen(NS_NAME);
                rn.geometry = &geom;
                req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_NAMESPACE;
                req.register_namespace = &rn;
                break;
        case R_POOL:
                rp.backend = KVDRIVE__BACKEND__BACKEND_MEMFD;
                rp.slot_count = 4;
                rp.slot_bytes = 4096;
                req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_POOL;
                req.register_pool = &rp;
                *ret_flags = FUZZ_CHUNK_MEMFD | 0u << FUZZ_CHUNK_SIZE_SHIFT;   /* 16 KiB */
                break;
        case R_COUNTERS:
                rc.count = 2;
                req.body_case = KVDRIVE__REQUEST__BODY_REGISTER_COUNTERS;
                req.register_counters = &rc;
                *ret_flags = FUZZ_CHUNK_MEMFD | 1u << FUZZ_CHUNK_SIZE_SHIFT;   /* 4 KiB */
                break;
        case R_PUT:
        case R_PUT_DURABLE:
        case R_PUT_COUNTED:
                tr.durable = kind == R_PUT_DURABLE;
                if (kind == R_PUT_COUNTED) {
                        for (unsigned i = 0; i < 4; i++) {
                                counted[i] = refs[i];
                                counted[i].counter = 1 + refs[i].layer;
                                countedp[i] = &counted[i];
                        }
                        tr.items = countedp;
                }
                req.body_case = KVDRIVE__REQUEST__BODY_PUT;
                req.put = &tr;
                break;
        case R_GET:
        case R_GET_HINT:
                tr.compute_us = kind == R_GET_HINT ? 500 : 0;
                req.body_case = KVDRIVE__REQUEST__BODY_GET;
                req.get = &tr;
                break;
        case R_LOOKUP:
                lk.n_keys = 4;
                lk.keys = keyp;
                req.body_case = KVDRIVE__REQUEST__BODY_LOOKUP;
                req.lookup = &lk;
                break;
        case R_DELETE:
        case R_DELETE_ALL:
                del.n_keys = 2;
                del.keys = keyp;
                del.all_layers = kind == R_DELETE_ALL;
                del.layer = 1;
                req.body_case = KVDRIVE__REQUEST__BODY_DELETE;
                req.delete_ = &del;
                break;
        case R_STATS:
                req.body_case = KVDRIVE__REQUEST__BODY_STATS;
                req.stats = &st;
                break;
        case R_PREFETCH:
                pf.n_items = 4;
                pf.items = refp;
                req.body_case = KVDRIVE__REQUEST__BODY_PREFETCH;
                req.prefetch = &pf;
                break;
        case R_SCORES:
                sc.n_items = 4;
                sc.items = scorep;
                req.body_case = KVDRIVE__REQUEST__BODY_SCORES;
                req.scores = &sc;
                break;
        case R_DROP:
                dn.ns_id = 0;
                req.body_case = KVDRIVE__REQUEST__BODY_DROP_NAMESPACE;
                req.drop_namespace = &dn;
                break;
        case R_COUNT:
                abort();
        }
        return frame(&req, buf);
}

/* ---- daemon inputs: chunk streams -------------------------------------- */

struct stream {
        uint8_t buf[1 << 16];
        size_t n;
};

static void add_chunk(struct stream *s, uint8_t flags, const uint8_t *p, size_t len)
{
        if (s->n + 3 + len > sizeof(s->buf))
                abort();
        s->buf[s->n++] = flags;
        s->buf[s->n++] = (uint8_t)len;
        s->buf[s->n++] = (uint8_t)(len >> 8);
        memcpy(s->buf + s->n, p, len);
        s->n += len;
}

static void add_req(struct stream *s, enum req_kind kind, uint64_t id, uint8_t extra_flags)
{
        uint8_t buf[4096], flags;
        size_t n = build(kind, id, buf, &flags);

        add_chunk(s, flags | extra_flags, buf, n);
}

/* Hello, a namespace, a pool: what every handler past them needs. */
static void add_setup(struct stream *s)
{
        add_req(s, R_HELLO, 1, 0);
        add_req(s, R_NAMESPACE, 2, 0);
        add_req(s, R_POOL, 3, 0);
}

static void daemon_seeds(const char *target)
{
        struct stream s;
        char name[64];

        for (int k = 0; k < R_COUNT; k++) {
                s.n = 0;
                if (k != R_HELLO)
                        add_setup(&s);
                if (k == R_PUT_COUNTED)
                        add_req(&s, R_COUNTERS, 9, 0);
                if (k == R_GET || k == R_GET_HINT || k == R_LOOKUP || k == R_DELETE || k == R_DELETE_ALL ||
                    k == R_PREFETCH || k == R_SCORES || k == R_DROP)
                        add_req(&s, R_PUT, 9, 0);       /* something to find */
                if (k > R_POOL)
                        add_req(&s, (enum req_kind)k, 10, 0);
                snprintf(name, sizeof(name), "%02d-%s", k, req_names[k]);
                write_file(target, name, s.buf, s.n);
        }
        /* One session through every handler. */
        s.n = 0;
        add_setup(&s);
        add_req(&s, R_COUNTERS, 4, 0);
        add_req(&s, R_PUT_COUNTED, 5, 0);
        add_req(&s, R_PUT_DURABLE, 6, 0);
        add_req(&s, R_GET_HINT, 7, 0);
        add_req(&s, R_LOOKUP, 8, 0);
        add_req(&s, R_SCORES, 9, 0);
        add_req(&s, R_PREFETCH, 10, 0);
        add_req(&s, R_DELETE, 11, 0);
        add_req(&s, R_GET, 12, 0);
        add_req(&s, R_DELETE_ALL, 13, 0);
        add_req(&s, R_STATS, 14, 0);
        add_req(&s, R_DROP, 15, 0);
        add_req(&s, R_GET, 16, 0);
        write_file(target, "50-every-handler", s.buf, s.n);
        /* Requests in flight when the client hangs up; a second session
         * reads what the first stored. */
        s.n = 0;
        add_setup(&s);
        add_req(&s, R_PUT, 4, FUZZ_CHUNK_NO_PUMP);
        add_req(&s, R_GET, 5, FUZZ_CHUNK_NO_PUMP);
        add_req(&s, R_HELLO, 1, FUZZ_CHUNK_HANG_UP);
        add_req(&s, R_NAMESPACE, 2, 0);
        add_req(&s, R_POOL, 3, 0);
        add_req(&s, R_GET, 6, 0);
        write_file(target, "51-hang-up-in-flight", s.buf, s.n);
        /* Two sessions interleaved. */
        s.n = 0;
        add_setup(&s);
        add_req(&s, R_HELLO, 1, FUZZ_CHUNK_NEW_SESSION);
        add_req(&s, R_NAMESPACE, 2, 0);
        add_req(&s, R_POOL, 3, 0);
        add_req(&s, R_PUT, 4, 0);
        add_req(&s, R_STATS, 5, 0);
        write_file(target, "52-two-sessions", s.buf, s.n);
        /* Out of order: no Hello first; a pool without its memfd. */
        s.n = 0;
        add_req(&s, R_PUT, 1, 0);
        add_req(&s, R_HELLO, 2, 0);
        {
                uint8_t buf[4096], flags;
                size_t n = build(R_POOL, 3, buf, &flags);

                add_chunk(&s, 0, buf, n);
        }
        write_file(target, "53-out-of-order", s.buf, s.n);
}

static void frame_seeds(void)
{
        uint8_t buf[4096], flags;
        char name[64];

        for (int k = 0; k < R_COUNT; k++) {
                size_t n = build((enum req_kind)k, 100 + k, buf, &flags);

                snprintf(name, sizeof(name), "%02d-%s", k, req_names[k]);
                write_file("fuzz-frame", name, buf, n);
        }
        kvd_frame_put_header(buf, 0);
        write_file("fuzz-frame", "50-empty-payload", buf, KVD_FRAME_HDR);
        kvd_frame_put_header(buf, 100);
        write_file("fuzz-frame", "51-truncated", buf, KVD_FRAME_HDR + 10);
}

/* ---- SSD headers -------------------------------------------------------- */

static void slot_seed(const char *name, uint8_t flags, bool torn, uint32_t payload_len)
{
        static uint8_t buf[1 + sizeof(struct kvd_extent_header) + sizeof(struct kvd_slot_header) + 4096];
        struct kvd_extent_header eh = { .magic = KVD_EXTENT_MAGIC, .version = KVD_FORMAT_VERSION,
                                        .slot_bytes = KVD_SLOT_HDR_BYTES + 4096, .generation = 3 };
        struct kvd_slot_header h = {
                .magic = KVD_SLOT_MAGIC, .version = KVD_SLOT_VERSION, .codec = KVD_CODEC_NONE,
                .generation = 9, .extent_generation = 3, .key_hi = 0x1000, .key_lo = 0x2000, .layer = 1,
                .payload_len = payload_len, .ns_layers = 2, .ns_kv_heads = 1, .ns_head_dim = 64, .ns_dtype = 1,
                .ns_block_tokens = 16, .ns_name = NS_NAME,
        };
        uint8_t *payload = buf + 1 + sizeof(eh) + sizeof(h);

        for (unsigned i = 0; i < 4096; i++)
                payload[i] = (uint8_t)(i * 13 + 1);
        kvd_extent_header_seal(&eh);
        h.payload_crc = kvd_slot_crc(payload, payload_len <= 4096 ? payload_len : 4096);
        kvd_slot_header_seal(&h);
        if (torn)
                h.key_lo ^= 0x100;
        buf[0] = flags;
        memcpy(buf + 1, &eh, sizeof(eh));
        memcpy(buf + 1 + sizeof(eh), &h, sizeof(h));
        write_file("fuzz-slot", name, buf, sizeof(buf));
}

/* ---- SSD images for fuzz-recover ----------------------------------------- */

static void add_record(struct stream *s, uint8_t flags, uint16_t page, const void *p, size_t len)
{
        if (s->n + 5 + len > sizeof(s->buf))
                abort();
        s->buf[s->n++] = flags;
        s->buf[s->n++] = (uint8_t)page;
        s->buf[s->n++] = (uint8_t)(page >> 8);
        s->buf[s->n++] = (uint8_t)len;
        s->buf[s->n++] = (uint8_t)(len >> 8);
        memcpy(s->buf + s->n, p, len);
        s->n += len;
}

/* Extent 0 (4 KiB blocks: 8 KiB slots) holding `slots` blocks of the seed
 * namespace as the tier writes them (crcs set by the harness), then a
 * session that reads them. */
static void recover_seed(const char *name, unsigned slots, bool session)
{
        struct stream s = { .n = 2 };
        struct kvd_extent_header eh = { .magic = KVD_EXTENT_MAGIC, .version = KVD_FORMAT_VERSION,
                                        .slot_bytes = KVD_SLOT_HDR_BYTES + 4096, .generation = 1 };
        uint8_t payload[4096];
        unsigned records = 1;

        add_record(&s, FUZZ_SEAL_EXTENT, 0, &eh, sizeof(eh));
        for (unsigned i = 0; i < slots; i++) {
                struct kvd_slot_header h = {
                        .magic = KVD_SLOT_MAGIC, .version = KVD_SLOT_VERSION, .codec = KVD_CODEC_NONE,
                        .generation = 10 + i, .extent_generation = 1, .key_hi = refs[i].key_hi,
                        .key_lo = refs[i].key_lo, .layer = refs[i].layer, .payload_len = 4096,
                        .ns_layers = geom.layers, .ns_kv_heads = geom.kv_heads, .ns_head_dim = geom.head_dim,
                        .ns_dtype = geom.dtype, .ns_block_tokens = geom.block_tokens, .ns_name = NS_NAME,
                };

                for (unsigned b = 0; b < sizeof(payload); b++)
                        payload[b] = (uint8_t)(b * 7 + i);
                add_record(&s, FUZZ_SEAL_SLOT, (uint16_t)(1 + 2 * i), &h, sizeof(h));
                add_record(&s, 0, (uint16_t)(2 + 2 * i), payload, sizeof(payload));
                records += 2;
        }
        s.buf[0] = (uint8_t)records;
        s.buf[1] = (uint8_t)(records >> 8);
        if (session) {
                add_setup(&s);
                add_req(&s, R_GET, 4, 0);
                add_req(&s, R_LOOKUP, 5, 0);
                add_req(&s, R_PREFETCH, 6, 0);
                add_req(&s, R_DELETE, 7, 0);
                add_req(&s, R_STATS, 8, 0);
        }
        write_file("fuzz-recover", name, s.buf, s.n);
}

/* ---- index checkpoints for fuzz-ckpt ------------------------------------ */

struct ckpt_src {
        unsigned i, n;
};

/* Blocks of two namespaces, in slots of extents 0 and 1. */
static bool ckpt_next(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns)
{
        struct ckpt_src *c = ctx;

        if (c->i == c->n)
                return false;
        *ret_h = (struct kvd_slot_header){
                .key_hi = 0x1000 + c->i, .key_lo = 0x2000, .layer = c->i % 2, .payload_len = 4096,
                .ns_layers = geom.layers, .ns_kv_heads = geom.kv_heads, .ns_head_dim = geom.head_dim,
                .ns_dtype = geom.dtype, .ns_block_tokens = geom.block_tokens, .ns_name = NS_NAME,
                .ns_fingerprint_len = c->i % 2 ? 4 : 0, .ns_fingerprint = { 1, 2, 3, 4 },
                .flags = c->i == 2 ? KVD_SLOT_SHARED : 0,
        };
        if (c->i % 2)
                ret_h->ns_name[0] = 'g';
        *ret_loc = 1 + 2 * c->i;
        *ret_ns = c->i % 2;
        c->i++;
        return true;
}

static void ckpt_seed(const char *name, uint8_t flags, unsigned blocks, bool clean)
{
        const struct kvd_ckpt_meta meta = { .next_gen = 40, .epoch = 3, .lineage = 0x5eed, .clean = clean };
        struct kvd_ckpt_layout lay = { .n_files = 1, .n_extents = 2, .extent_bytes = 1u << 20,
                                       .files = { { 12, 2u << 20, 1700000000, 5 } } };
        struct kvd_ckpt_extent ext[2] = { { 1, KVD_SLOT_HDR_BYTES + 4096, 0 }, { 2, KVD_SLOT_HDR_BYTES + 4096, 0 } };
        struct ckpt_src src = { 0, blocks };
        uint8_t *buf = NULL, *out;
        size_t len = 0;

        if (kvd_ckpt_build(&lay, ext, &meta, ckpt_next, &src, &buf, &len) < 0 || !(out = malloc(len + 1)))
                abort();
        out[0] = flags;
        memcpy(out + 1, buf, len);
        write_file("fuzz-ckpt", name, out, len + 1);
        free(out);
        free(buf);
}

/* A journal as the tier writes it: header, then entries of epochs 3 and 4. */
static void journal_seed(const char *name, uint8_t flags)
{
        static const uint32_t first[] = { 0, 2 }, later[] = { 1 };
        char dir[] = "/tmp/kvdrive-corpus-XXXXXX", path[64];
        uint8_t buf[1 + 4096];
        size_t n = 0;
        FILE *f;
        int fd;

        if (!mkdtemp(dir) || kvd_journal_create(dir, 0x5eed, 3, 4, first, 2, &fd) < 0 ||
            kvd_journal_append(fd, 4, later, 1) < 0)
                abort();
        close(fd);
        snprintf(path, sizeof(path), "%s/kvdrive.dirty", dir);
        f = fopen(path, "rb");
        if (!f)
                abort();
        n = fread(buf + 1, 1, sizeof(buf) - 1, f);
        fclose(f);
        kvd_journal_remove(dir);
        rmdir(dir);
        buf[0] = flags;
        write_file("fuzz-ckpt", name, buf, n + 1);
}

int main(int argc, char **argv)
{
        if (argc != 2) {
                fprintf(stderr, "usage: %s DIR   (writes DIR/<target>/ seeds)\n", argv[0]);
                return 2;
        }
        outdir = argv[1];
        if (mkdir(outdir, 0755) < 0 && errno != EEXIST) {
                perror(outdir);
                return 1;
        }
        init_items();
        frame_seeds();
        daemon_seeds("fuzz-daemon");
        daemon_seeds("fuzz-daemon-ssd");
        recover_seed("00-empty-extent", 0, false);
        recover_seed("01-two-blocks", 2, false);
        recover_seed("02-four-blocks-read", 4, true);
        slot_seed("00-valid", 0, false, 4096);
        slot_seed("01-valid-resealed", 7, false, 4096);
        slot_seed("02-torn", 0, true, 4096);
        slot_seed("03-short-payload", 7, false, 100);
        slot_seed("04-empty-payload", 7, false, 0);
        ckpt_seed("00-empty", 0, 0, true);
        ckpt_seed("01-four-blocks", 0, 4, true);
        ckpt_seed("02-four-blocks-resealed", 1, 4, false);
        journal_seed("10-journal", 2);
        journal_seed("11-journal-epoch-4", 2 | 8);
        journal_seed("12-journal-resealed", 2 | 4);
        return 0;
}
