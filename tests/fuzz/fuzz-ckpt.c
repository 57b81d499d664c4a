/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's index checkpoint parser (kvdrived/tiers/ssd-checkpoint.c)
 * on any bytes, as a start-up finds them in kvdrive.ckpt.
 *
 * Input: u8 flags, then the file. Flags bit 0 reseals the file (its last 4
 * bytes set to the crc of the rest), so that inputs get past the crc to the
 * checks behind it. A checkpoint the parser accepts must be safe to read
 * whole through its accessors, must match its own layout and no other, and
 * must come back the same when built again from its records.
 *
 * Flags bit 1: the file is the dirty-extent journal (tiers/ssd-journal.h)
 * instead, parsed for the lineage and extent count its header names and
 * the epoch base + (flags >> 3); bit 2 reseals its header and entries.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "slot.h"
#include "ssd-checkpoint.h"
#include "ssd-journal.h"

struct walk {
        const struct kvd_ckpt *k;
        uint64_t i, n;
};

static bool next_rec(void *ctx, struct kvd_slot_header *ret_h, uint32_t *ret_loc, uint32_t *ret_ns)
{
        struct walk *w = ctx;

        if (w->i == w->n)
                return false;
        kvd_ckpt_record(w->k, w->i, ret_h, ret_loc);
        *ret_ns = kvd_ckpt_record_ns(w->k, w->i);
        w->i++;
        return true;
}

static void same_record(const struct kvd_ckpt *a, const struct kvd_ckpt *b, uint64_t i)
{
        struct kvd_slot_header ha, hb;
        uint32_t la, lb;

        memset(&ha, 0, sizeof(ha));
        memset(&hb, 0, sizeof(hb));
        kvd_ckpt_record(a, i, &ha, &la);
        kvd_ckpt_record(b, i, &hb, &lb);
        if (la != lb || ha.key_hi != hb.key_hi || ha.key_lo != hb.key_lo || ha.layer != hb.layer ||
            ha.payload_len != hb.payload_len || ha.flags != hb.flags || ha.codec != hb.codec ||
            ha.ns_layers != hb.ns_layers ||
            ha.ns_kv_heads != hb.ns_kv_heads || ha.ns_head_dim != hb.ns_head_dim || ha.ns_dtype != hb.ns_dtype ||
            ha.ns_block_tokens != hb.ns_block_tokens || ha.ns_owner != hb.ns_owner ||
            ha.ns_fingerprint_len != hb.ns_fingerprint_len || memcmp(ha.ns_name, hb.ns_name, sizeof(ha.ns_name)) ||
            memcmp(ha.ns_fingerprint, hb.ns_fingerprint, sizeof(ha.ns_fingerprint)))
                fuzz_fail("record %llu changed when the checkpoint was built again", (unsigned long long)i);
}

static void journal_one(uint8_t flags, uint8_t *buf, size_t len)
{
        static uint8_t dirty[1u << 16];
        uint64_t lineage, base;
        uint32_t n_ext, n = 0, set = 0, crc;
        int r;

        if (len < 32)
                return;
        if (flags & 4) {
                crc = kvd_slot_crc(buf, 28);
                memcpy(buf + 28, &crc, 4);
                for (size_t at = 32; at + 16 <= len; at += 16) {
                        crc = kvd_slot_crc(buf + at, 12);
                        memcpy(buf + at + 12, &crc, 4);
                }
        }
        memcpy(&lineage, buf + 8, 8);
        memcpy(&base, buf + 16, 8);
        memcpy(&n_ext, buf + 24, 4);
        if (n_ext > sizeof(dirty))
                n_ext = sizeof(dirty);
        r = kvd_journal_parse(buf, len, n_ext, lineage, base + (flags >> 3), dirty, &n);
        if (r < 0 && r != -EBADMSG && r != -ESTALE)
                fuzz_fail("the journal parser failed with %d", r);
        for (uint32_t e = 0; e < n_ext; e++)
                set += dirty[e] != 0;
        if (set != n || (r < 0 && n))
                fuzz_fail("the journal parser said %u extents and set %u (r %d)", n, set, r);
        if (r == 0 && (size_t)n * 16 > len - 32)
                fuzz_fail("%u extents from %zu bytes of entries", n, len - 32);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct kvd_ckpt *k = NULL, *k2 = NULL;
        struct kvd_ckpt_meta meta, meta2;
        struct kvd_ckpt_layout lay;
        struct walk w;
        uint8_t *buf, *buf2 = NULL;
        size_t len, len2 = 0;
        uint64_t n;
        int r;

        if (size < 1)
                return 0;
        len = size - 1;
        buf = malloc(len ? len : 1);
        if (!buf)
                return 0;
        memcpy(buf, data + 1, len);
        if (data[0] & 2) {
                journal_one(data[0], buf, len);
                free(buf);
                return 0;
        }
        if ((data[0] & 1) && len >= 4) {
                uint32_t crc = kvd_slot_crc(buf, len - 4);

                memcpy(buf + len - 4, &crc, 4);
        }
        r = kvd_ckpt_parse(buf, len, &k);
        if (r < 0) {
                if (r != -EBADMSG && r != -ENOMEM)
                        fuzz_fail("the parser failed with %d", r);
                return 0;
        }
        n = kvd_ckpt_blocks(k);
        lay = *kvd_ckpt_layout_of(k);
        if (lay.n_files > KVD_CKPT_MAX_FILES)
                fuzz_fail("a checkpoint of %u files passed", lay.n_files);
        if (n * 40 > len)
                fuzz_fail("%llu records in %zu bytes", (unsigned long long)n, len);
        if (kvd_ckpt_check_layout(k, &lay) != 0 || kvd_ckpt_check_shape(k, &lay) != 0)
                fuzz_fail("a checkpoint does not match its own layout");
        lay.n_extents ^= 1;
        if (kvd_ckpt_check_layout(k, &lay) != -ESTALE || kvd_ckpt_check_shape(k, &lay) != -ESTALE)
                fuzz_fail("a checkpoint matches another layout");
        lay.n_extents ^= 1;
        if (lay.n_files > 0) {
                lay.files[0].mtime_ns ^= 1;
                if (kvd_ckpt_check_layout(k, &lay) != -ESTALE)
                        fuzz_fail("a checkpoint matches files changed since");
                if (kvd_ckpt_check_shape(k, &lay) != 0)
                        fuzz_fail("a checkpoint is not of the shape of files only written since");
                lay.files[0].mtime_ns ^= 1;
                lay.files[0].ino ^= 1;
                if (kvd_ckpt_check_shape(k, &lay) != -ESTALE)
                        fuzz_fail("a checkpoint matches other files");
                lay.files[0].ino ^= 1;
        }
        for (uint64_t i = 0; i < n; i++) {
                struct kvd_slot_header h;
                uint32_t loc;

                kvd_ckpt_record(k, i, &h, &loc);
                if (memchr(h.ns_name, '\0', sizeof(h.ns_name)) == NULL)
                        fuzz_fail("record %llu: a namespace name without its end", (unsigned long long)i);
                if (h.ns_fingerprint_len > KVD_FINGERPRINT_MAX)
                        fuzz_fail("record %llu: a fingerprint of %u bytes", (unsigned long long)i,
                                  h.ns_fingerprint_len);
        }

        /* Built again from what was read, it reads back the same. */
        w = (struct walk){ k, 0, n };
        kvd_ckpt_meta_of(k, &meta);
        r = kvd_ckpt_build(&lay, kvd_ckpt_extents(k), &meta, next_rec, &w, &buf2, &len2);
        if (r == 0) {
                r = kvd_ckpt_parse(buf2, len2, &k2);
                if (r < 0)
                        fuzz_fail("a checkpoint built from a valid one does not parse: %d", r);
                kvd_ckpt_meta_of(k2, &meta2);
                if (kvd_ckpt_blocks(k2) != n || meta.next_gen != meta2.next_gen ||
                    meta.epoch != meta2.epoch || meta.lineage != meta2.lineage || meta.clean != meta2.clean ||
                    kvd_ckpt_check_layout(k2, &lay) != 0 ||
                    memcmp(kvd_ckpt_extents(k2), kvd_ckpt_extents(k),
                           (size_t)lay.n_extents * sizeof(struct kvd_ckpt_extent)))
                        fuzz_fail("a checkpoint built again differs");
                for (uint64_t i = 0; i < n; i++)
                        same_record(k, k2, i);
                kvd_ckpt_free(k2);
        } else if (r != -ENOMEM) {
                fuzz_fail("building a checkpoint again failed: %d", r);
        }
        kvd_ckpt_free(k);
        return 0;
}
