/* SPDX-License-Identifier: MIT */
#include "ssd-checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

#define CKPT_NAME "kvdrive.ckpt"
#define CKPT_TMP  "kvdrive.ckpt.tmp"
#define CKPT_MAGIC 0x434b564bu /* "KVKC" */
#define CKPT_VERSION 2u
#define CKPT_CLEAN 0x1u

struct ckpt_head {
        uint32_t magic, version;
        struct kvd_ckpt_layout lay;
        uint64_t next_gen;
        uint32_t n_ns, flags;
        uint64_t n_recs;
        uint64_t epoch, lineage;        /* kvd_ckpt_meta */
};

/* A namespace's identity, once per checkpoint. */
struct ckpt_ns {
        uint32_t layers, kv_heads, head_dim, dtype, block_tokens, owner;
        char name[128];
        uint8_t fingerprint_len, reserved[7];
        uint8_t fingerprint[KVD_FINGERPRINT_MAX];
};

struct ckpt_rec {
        uint64_t key_hi, key_lo;
        uint32_t loc, ns, layer, payload_len;   /* payload_len: as stored (encoded by codec) */
        uint8_t flags, codec, reserved[6];
};

struct kvd_ckpt {
        uint8_t *buf;
        const struct ckpt_head *head;
        const struct kvd_ckpt_extent *ext;
        const struct ckpt_ns *ns;
        const struct ckpt_rec *recs;
};

struct growbuf {
        uint8_t *p;
        size_t len, cap;
};

static int gb_put(struct growbuf *g, const void *p, size_t n)
{
        if (g->len + n > g->cap) {
                size_t cap = g->cap ? g->cap : 1u << 16;
                uint8_t *q;

                while (cap < g->len + n)
                        cap *= 2;
                q = realloc(g->p, cap);
                if (!q)
                        return -ENOMEM;
                g->p = q;
                g->cap = cap;
        }
        memcpy(g->p + g->len, p, n);
        g->len += n;
        return 0;
}

static int path_in(char *buf, size_t n, const char *dir, const char *name)
{
        return (size_t)snprintf(buf, n, "%s/%s", dir, name) >= n ? -ENAMETOOLONG : 0;
}

int kvd_ckpt_file_of(int fd, struct kvd_ckpt_file *ret)
{
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        *ret = (struct kvd_ckpt_file){ (uint64_t)st.st_ino, (uint64_t)st.st_size, st.st_mtim.tv_sec,
                                       st.st_mtim.tv_nsec };
        return 0;
}

int kvd_ckpt_fsync_dir(const char *dir)
{
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r = 0;

        if (fd < 0)
                return -errno;
        if (fsync(fd) < 0)
                r = -errno;
        close(fd);
        return r;
}

int kvd_ckpt_write_all(int fd, const void *buf, size_t n)
{
        const uint8_t *p = buf;

        while (n > 0) {
                ssize_t w = write(fd, p, n);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return w < 0 ? -errno : -EIO;
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

/* Maps the caller's namespace ids to the checkpoint's, growing with them. */
struct ns_map {
        uint32_t *to;           /* caller id -> 1 + checkpoint index, 0: not yet */
        uint32_t cap;
};

static int ns_ref(struct ns_map *m, struct growbuf *ns, uint32_t *n_ns, const struct kvd_slot_header *h,
                  uint32_t id, uint32_t *ret)
{
        struct ckpt_ns rec = { 0 };
        int r;

        if (id >= m->cap) {
                uint32_t cap = m->cap ? m->cap : 64;
                uint32_t *to;

                while (cap <= id)
                        cap *= 2;
                to = realloc(m->to, cap * sizeof(*to));
                if (!to)
                        return -ENOMEM;
                memset(to + m->cap, 0, (cap - m->cap) * sizeof(*to));
                m->to = to;
                m->cap = cap;
        }
        if (m->to[id]) {
                *ret = m->to[id] - 1;
                return 0;
        }
        rec = (struct ckpt_ns){ h->ns_layers, h->ns_kv_heads, h->ns_head_dim, h->ns_dtype, h->ns_block_tokens,
                                h->ns_owner, .fingerprint_len = h->ns_fingerprint_len };
        memcpy(rec.name, h->ns_name, sizeof(rec.name));
        memcpy(rec.fingerprint, h->ns_fingerprint, sizeof(rec.fingerprint));
        r = gb_put(ns, &rec, sizeof(rec));
        if (r < 0)
                return r;
        *ret = (*n_ns)++;
        m->to[id] = *ret + 1;
        return 0;
}

struct kvd_ckpt_builder {
        struct ckpt_head head;
        struct kvd_ckpt_extent *ext;
        struct growbuf recs, ns;
        struct ns_map map;
};

int kvd_ckpt_builder_new(const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                         const struct kvd_ckpt_meta *meta, uint64_t expect, struct kvd_ckpt_builder **ret)
{
        struct kvd_ckpt_builder *b = calloc(1, sizeof(*b));

        if (!b)
                return -ENOMEM;
        /* Room for them at once: a doubling's copy (of 8 MB at 200,000
         * records) would be one step's 5 ms. Untouched pages cost nothing. */
        if (expect) {
                b->recs.cap = (size_t)(expect + expect / 8 + 1) * sizeof(struct ckpt_rec);
                b->recs.p = malloc(b->recs.cap);
                if (!b->recs.p)
                        b->recs.cap = 0;
        }
        b->head = (struct ckpt_head){ .magic = CKPT_MAGIC, .version = CKPT_VERSION, .lay = *lay,
                                      .next_gen = meta->next_gen, .flags = meta->clean ? CKPT_CLEAN : 0,
                                      .epoch = meta->epoch, .lineage = meta->lineage };
        b->ext = malloc((size_t)lay->n_extents * sizeof(*ext) + 1);
        if (!b->ext) {
                free(b);
                return -ENOMEM;
        }
        memcpy(b->ext, ext, (size_t)lay->n_extents * sizeof(*ext));
        *ret = b;
        return 0;
}

int kvd_ckpt_builder_add(struct kvd_ckpt_builder *b, kvd_tier_ckpt_fn next, void *ctx, uint64_t max)
{
        struct kvd_slot_header h;
        uint32_t loc, ns_id;
        int r = 0;

        for (uint64_t i = 0; i < max; i++) {
                struct ckpt_rec rec;

                if (!next(ctx, &h, &loc, &ns_id))
                        return 0;
                rec = (struct ckpt_rec){ h.key_hi, h.key_lo, loc, 0, h.layer, h.payload_len, h.flags,
                                         (uint8_t)h.codec, { 0 } };
                r = ns_ref(&b->map, &b->ns, &b->head.n_ns, &h, ns_id, &rec.ns);
                if (r == 0)
                        r = gb_put(&b->recs, &rec, sizeof(rec));
                if (r < 0)
                        return r;
                b->head.n_recs++;
        }
        return 1;
}

uint64_t kvd_ckpt_builder_records(const struct kvd_ckpt_builder *b)
{
        return b->head.n_recs;
}

struct kvd_ckpt_builder *kvd_ckpt_builder_free(struct kvd_ckpt_builder *b)
{
        if (b) {
                free(b->ext);
                free(b->recs.p);
                free(b->ns.p);
                free(b->map.to);
                free(b);
        }
        return NULL;
}

int kvd_ckpt_builder_finish(struct kvd_ckpt_builder *b, uint8_t **ret_buf, size_t *ret_len)
{
        struct growbuf out = { 0 };
        uint32_t crc;
        int r;

        r = gb_put(&out, &b->head, sizeof(b->head));
        if (r == 0)
                r = gb_put(&out, b->ext, (size_t)b->head.lay.n_extents * sizeof(*b->ext));
        if (r == 0 && b->ns.len)
                r = gb_put(&out, b->ns.p, b->ns.len);
        if (r == 0 && b->recs.len)
                r = gb_put(&out, b->recs.p, b->recs.len);
        if (r == 0) {
                crc = kvd_slot_crc(out.p, out.len);
                r = gb_put(&out, &crc, sizeof(crc));
        }
        kvd_ckpt_builder_free(b);
        if (r < 0) {
                free(out.p);
                return r;
        }
        *ret_buf = out.p;
        *ret_len = out.len;
        return 0;
}

int kvd_ckpt_build(const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                   const struct kvd_ckpt_meta *meta, kvd_tier_ckpt_fn next, void *ctx, uint8_t **ret_buf,
                   size_t *ret_len)
{
        struct kvd_ckpt_builder *b = NULL;
        int r = kvd_ckpt_builder_new(lay, ext, meta, 0, &b);

        if (r == 0)
                r = kvd_ckpt_builder_add(b, next, ctx, UINT64_MAX);
        if (r < 0) {
                kvd_ckpt_builder_free(b);
                return r;
        }
        return kvd_ckpt_builder_finish(b, ret_buf, ret_len);
}

int kvd_ckpt_write_buf(const char *dir, const uint8_t *buf, size_t len)
{
        char tmp[PATH_MAX], path[PATH_MAX];
        int fd, r;

        r = path_in(tmp, sizeof(tmp), dir, CKPT_TMP);
        if (r == 0)
                r = path_in(path, sizeof(path), dir, CKPT_NAME);
        if (r < 0)
                return r;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        r = kvd_ckpt_write_all(fd, buf, len);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r == 0)
                r = kvd_ckpt_fsync_dir(dir);
        if (r < 0)
                unlink(tmp);
        return r;
}

int kvd_ckpt_write(const char *dir, const struct kvd_ckpt_layout *lay, const struct kvd_ckpt_extent *ext,
                   const struct kvd_ckpt_meta *meta, kvd_tier_ckpt_fn next, void *ctx)
{
        uint8_t *buf = NULL;
        size_t len = 0;
        int r;

        r = kvd_ckpt_build(lay, ext, meta, next, ctx, &buf, &len);
        if (r == 0)
                r = kvd_ckpt_write_buf(dir, buf, len);
        if (r < 0)
                log_warning("SSD tier: cannot write the index checkpoint in %s: %s; the next start scans the "
                            "slot headers", dir, strerror(-r));
        free(buf);
        return r;
}

int kvd_ckpt_read_whole(const char *path, uint8_t **ret, size_t *ret_len)
{
        struct stat st;
        uint8_t *p = NULL;
        size_t got = 0;
        int fd, r = 0;

        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                goto out;
        }
        p = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
        if (!p) {
                r = -ENOMEM;
                goto out;
        }
        while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, p + got, (size_t)st.st_size - got);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0) {
                        r = n < 0 ? -errno : -EBADMSG;
                        goto out;
                }
                got += (size_t)n;
        }
        *ret = p;
        *ret_len = got;
        p = NULL;
out:
        free(p);
        close(fd);
        return r;
}

static bool same_layout(const struct kvd_ckpt_layout *a, const struct kvd_ckpt_layout *b)
{
        if (a->n_files != b->n_files || a->n_extents != b->n_extents || a->extent_bytes != b->extent_bytes)
                return false;
        for (uint32_t i = 0; i < a->n_files && i < KVD_CKPT_MAX_FILES; i++)
                if (memcmp(&a->files[i], &b->files[i], sizeof(a->files[i])) != 0)
                        return false;
        return true;
}

/* Everything but the layout: crc, magic, sizes adding up to len, every
 * record naming a namespace that is there. */
static int check(struct kvd_ckpt *k, size_t len)
{
        const struct ckpt_head *h = (const void *)k->buf;
        uint32_t crc;
        size_t want;

        if (len < sizeof(*h) + sizeof(crc))
                return -EBADMSG;
        memcpy(&crc, k->buf + len - sizeof(crc), sizeof(crc));
        if (crc != kvd_slot_crc(k->buf, len - sizeof(crc)) || h->magic != CKPT_MAGIC || h->version != CKPT_VERSION)
                return -EBADMSG;
        if ((h->flags & ~CKPT_CLEAN) || h->lay.n_files > KVD_CKPT_MAX_FILES || h->lay.n_extents > UINT32_MAX / 2 || h->n_ns > UINT32_MAX / 2 ||
            h->n_recs > UINT32_MAX)
                return -EBADMSG;
        want = sizeof(*h) + (size_t)h->lay.n_extents * sizeof(struct kvd_ckpt_extent) +
               (size_t)h->n_ns * sizeof(struct ckpt_ns) + (size_t)h->n_recs * sizeof(struct ckpt_rec) + sizeof(crc);
        if (want != len)
                return -EBADMSG;
        k->head = h;
        k->ext = (const void *)(k->buf + sizeof(*h));
        k->ns = (const void *)(k->ext + h->lay.n_extents);
        k->recs = (const void *)(k->ns + h->n_ns);
        for (uint64_t i = 0; i < h->n_recs; i++)
                if (k->recs[i].ns >= h->n_ns)
                        return -EBADMSG;
        return 0;
}

int kvd_ckpt_parse(uint8_t *buf, size_t len, struct kvd_ckpt **ret)
{
        struct kvd_ckpt *k = calloc(1, sizeof(*k));
        int r;

        if (!k) {
                free(buf);
                return -ENOMEM;
        }
        k->buf = buf;
        r = check(k, len);
        if (r < 0) {
                kvd_ckpt_free(k);
                return r;
        }
        *ret = k;
        return 0;
}

int kvd_ckpt_check_layout(const struct kvd_ckpt *k, const struct kvd_ckpt_layout *lay)
{
        return same_layout(&k->head->lay, lay) ? 0 : -ESTALE;
}

int kvd_ckpt_check_shape(const struct kvd_ckpt *k, const struct kvd_ckpt_layout *lay)
{
        const struct kvd_ckpt_layout *a = &k->head->lay;

        if (a->n_files != lay->n_files || a->n_extents != lay->n_extents || a->extent_bytes != lay->extent_bytes)
                return -ESTALE;
        for (uint32_t i = 0; i < a->n_files && i < KVD_CKPT_MAX_FILES; i++)
                if (a->files[i].ino != lay->files[i].ino)
                        return -ESTALE;
        return 0;
}

void kvd_ckpt_meta_of(const struct kvd_ckpt *k, struct kvd_ckpt_meta *ret)
{
        *ret = (struct kvd_ckpt_meta){ k->head->next_gen, k->head->epoch, k->head->lineage,
                                       (k->head->flags & CKPT_CLEAN) != 0 };
}

const struct kvd_ckpt_layout *kvd_ckpt_layout_of(const struct kvd_ckpt *k)
{
        return &k->head->lay;
}

int kvd_ckpt_load(const char *dir, struct kvd_ckpt **ret)
{
        char path[PATH_MAX];
        struct kvd_ckpt *k = NULL;
        uint8_t *buf = NULL;
        size_t len = 0;
        int r;

        r = path_in(path, sizeof(path), dir, CKPT_NAME);
        if (r == 0)
                r = kvd_ckpt_read_whole(path, &buf, &len);
        if (r == 0)
                r = kvd_ckpt_parse(buf, len, &k);
        if (r < 0)
                return r;
        *ret = k;
        return 0;
}

struct kvd_ckpt *kvd_ckpt_free(struct kvd_ckpt *k)
{
        if (k) {
                free(k->buf);
                free(k);
        }
        return NULL;
}

const struct kvd_ckpt_extent *kvd_ckpt_extents(const struct kvd_ckpt *k)
{
        return k->ext;
}

uint64_t kvd_ckpt_blocks(const struct kvd_ckpt *k)
{
        return k->head->n_recs;
}

void kvd_ckpt_record(const struct kvd_ckpt *k, uint64_t i, struct kvd_slot_header *ret_h, uint32_t *ret_loc)
{
        const struct ckpt_rec *r = &k->recs[i];
        const struct ckpt_ns *n = &k->ns[r->ns];

        *ret_h = (struct kvd_slot_header){
                .key_hi = r->key_hi, .key_lo = r->key_lo, .layer = r->layer, .payload_len = r->payload_len,
                .ns_layers = n->layers, .ns_kv_heads = n->kv_heads, .ns_head_dim = n->head_dim,
                .ns_dtype = n->dtype, .ns_block_tokens = n->block_tokens, .ns_owner = n->owner,
                .ns_fingerprint_len = n->fingerprint_len, .flags = r->flags, .codec = r->codec,
        };
        memcpy(ret_h->ns_name, n->name, sizeof(ret_h->ns_name));
        ret_h->ns_name[sizeof(ret_h->ns_name) - 1] = '\0';
        memcpy(ret_h->ns_fingerprint, n->fingerprint, sizeof(ret_h->ns_fingerprint));
        if (ret_h->ns_fingerprint_len > KVD_FINGERPRINT_MAX)
                ret_h->ns_fingerprint_len = KVD_FINGERPRINT_MAX;
        *ret_loc = r->loc;
}

uint32_t kvd_ckpt_record_ns(const struct kvd_ckpt *k, uint64_t i)
{
        return k->recs[i].ns;
}

int kvd_ckpt_remove_files(const char *dir, const char *name, const char *tmp_name)
{
        char path[PATH_MAX], tmp[PATH_MAX];
        bool any = false;
        int r;

        r = path_in(path, sizeof(path), dir, name);
        if (r == 0)
                r = path_in(tmp, sizeof(tmp), dir, tmp_name);
        if (r < 0)
                return r;
        if (unlink(path) == 0)
                any = true;
        else if (errno != ENOENT)
                return -errno;
        if (unlink(tmp) == 0)
                any = true;
        return any ? kvd_ckpt_fsync_dir(dir) : 0;
}

int kvd_ckpt_remove(const char *dir)
{
        return kvd_ckpt_remove_files(dir, CKPT_NAME, CKPT_TMP);
}
