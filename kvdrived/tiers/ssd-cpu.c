/* SPDX-License-Identifier: MIT */
/*
 * The SSD tier's CPU stage: payload checksums and codecs (ssd-codec), run
 * by the tier's threads (ssd-threads, util/jobs.h) so that the event loop
 * does not spend a large block's worth of CPU on them while others wait.
 *
 *  - A write is encoded (into a bounce buffer laid out as its slot: header
 *    page, then the encoded payload, zero-padded to 4 KiB) and checksummed
 *    before it is queued for I/O; its slot class is sized for the encoded
 *    length (ssd_stored_len(), what namespaces are registered with).
 *  - A read of a slot of another size than the raw block's goes into a
 *    bounce buffer of the slot's size; after the I/O, the header, key,
 *    length and crc are checked, then the payload is decoded into the host
 *    page. A slot that fails any of it is a miss (-EBADMSG), as always.
 *
 * Small uncompressed payloads (under CPU_OFFLOAD_BYTES) are checksummed on
 * the loop, as before: a hand-off to a thread costs about as much. So are
 * large ones while the tier has nothing else in flight: then the loop has
 * no I/O to keep going, and the hand-off's two wake-ups (a thread, then the
 * loop again: ~60 us each on an idle VM's vCPU) would only add latency — a
 * lone 1 MiB read took 16% longer with them (docs/bench/ssd.md).
 * Encoded slots are read whatever the tier's codec is now (the header says
 * which), so changing ssd-codec never makes a block read wrong.
 */
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "macro.h"
#include "ssd-internal.h"

uint32_t ssd_stored_len(const struct kvd_tier *t, const struct kvd_slot_header *id, uint32_t raw)
{
        const struct kvd_ssd *s = container_of(t, struct kvd_ssd, tier);
        uint32_t n = s->codec == KVD_CODEC_ID_NONE ? 0 : kvd_slot_stored_len(s->codec, id, raw);

        return n ? n : raw;
}

/* Nothing else in flight, queued or at the threads. */
static bool tier_idle(const struct kvd_ssd *s)
{
        return s->inflight == 0 && s->queued == 0 && kvd_jobs_outstanding(s->jobs) == 0;
}

static void *slot_buffer(size_t n)
{
        void *p;

        return posix_memalign(&p, PAGE, n) ? NULL : p;
}

/* ---- writes ------------------------------------------------------------ */

static void write_run(struct kvd_job *j)
{
        struct op *o = container_of(j, struct op, job);
        const uint8_t *raw = (const uint8_t *)o->page + KVD_SLOT_HDR_BYTES;
        struct kvd_codec_shape shape;
        uint8_t *dst;
        size_t cap, n;

        if (o->codec == KVD_CODEC_ID_NONE) {
                o->crc = kvd_slot_crc(raw, o->len);
                o->crc_ready = true;
                return;
        }
        kvd_slot_codec_shape(&o->hdr, &shape);
        dst = o->bounce + KVD_SLOT_HDR_BYTES;
        cap = o->io_len - KVD_SLOT_HDR_BYTES;
        o->cpu_result = kvd_codec_encode(o->codec, &shape, raw, o->len, dst, cap, &n);
        if (o->cpu_result < 0)
                return;
        memset(dst + n, 0, cap - n);
        o->stored_len = (uint32_t)n;
        o->io_len = KVD_SLOT_HDR_BYTES + (uint32_t)ALIGN_UP(n, PAGE);
        o->crc = kvd_slot_crc(dst, n);
        o->crc_ready = true;
}

static void write_done(struct kvd_job *j)
{
        struct op *o = container_of(j, struct op, job);

        if (o->cpu_result < 0)
                ssd_op_end(o->s, o, o->cpu_result);
        else
                ssd_enqueue(o->s, o);
}

bool ssd_cpu_write(struct kvd_ssd *s, struct op *o)
{
        uint32_t n = s->codec == KVD_CODEC_ID_NONE ? 0 : kvd_slot_stored_len(s->codec, &o->hdr, o->len);

        o->codec = n ? s->codec : KVD_CODEC_ID_NONE;
        o->stored_len = n ? n : o->len;
        o->io_len = KVD_SLOT_HDR_BYTES + (uint32_t)ALIGN_UP(o->stored_len, PAGE);
        if (o->codec != KVD_CODEC_ID_NONE) {
                /* The slot is sized for the encoded block: raw would not fit. */
                o->bounce = slot_buffer(o->io_len);
                if (!o->bounce) {
                        ssd_op_end(s, o, -ENOMEM);
                        return true;
                }
        } else if (o->len < CPU_OFFLOAD_BYTES || tier_idle(s)) {
                return false;
        }
        o->job = (struct kvd_job){ .run = write_run, .done = write_done };
        kvd_jobs_submit(s->jobs, &o->job);
        return true;
}

/* ---- reads ------------------------------------------------------------- */

static void read_run(struct kvd_job *j)
{
        struct op *o = container_of(j, struct op, job);
        const uint8_t *slot = o->bounce ? o->bounce : o->page;
        const struct kvd_slot_header *h = (const void *)slot;
        const uint8_t *payload = slot + KVD_SLOT_HDR_BYTES;
        uint8_t *dst = (uint8_t *)o->page + KVD_SLOT_HDR_BYTES, *copy = NULL;
        struct kvd_codec_shape shape;
        size_t n;

        /* hdr.extent_generation: the extent's, taken on the loop. */
        if (!kvd_slot_matches_any(h, o->hdr.extent_generation, o->hdr.key_hi, o->hdr.key_lo, o->hdr.layer, payload,
                                  o->io_len - KVD_SLOT_HDR_BYTES, o->len)) {
                o->cpu_result = -EBADMSG;
                return;
        }
        if (h->codec == KVD_CODEC_ID_NONE) {
                if (o->bounce)
                        memcpy(dst, payload, o->len);
                return;
        }
        /* Read straight into the page (a slot of the raw block's size): it
         * cannot be decoded onto itself. */
        if (!o->bounce) {
                copy = malloc(h->payload_len);
                if (!copy) {
                        o->cpu_result = -ENOMEM;
                        return;
                }
                memcpy(copy, payload, h->payload_len);
                payload = copy;
        }
        kvd_slot_codec_shape(h, &shape);
        if (kvd_codec_decode((enum kvd_codec)h->codec, &shape, payload, h->payload_len, dst, o->len, &n) < 0 ||
            n != o->len)
                o->cpu_result = -EBADMSG;
        free(copy);
}

static void read_done(struct kvd_job *j)
{
        struct op *o = container_of(j, struct op, job);

        if (o->cpu_result == -EBADMSG) {
                log_debug("SSD slot %u: not the block asked for, or damaged (checked off the loop)", o->loc);
                o->s->st.crc_failures++;
        }
        ssd_op_end(o->s, o, o->cpu_result);
}

bool ssd_cpu_read(struct kvd_ssd *s, struct op *o)
{
        const struct kvd_slot_header *h = o->bounce ? (const void *)o->bounce : o->page;

        if (!o->bounce && h->codec == KVD_CODEC_ID_NONE && (o->len < CPU_OFFLOAD_BYTES || tier_idle(s)))
                return false;
        o->hdr.extent_generation = s->extent_gen[kvd_slab_extent_of(s->slab, o->loc)];
        o->job = (struct kvd_job){ .run = read_run, .done = read_done };
        kvd_jobs_submit(s->jobs, &o->job);
        return true;
}

bool ssd_read_bounce(struct kvd_ssd *s, struct op *o)
{
        int klass = kvd_slab_extent_class(s->slab, kvd_slab_extent_of(s->slab, o->loc));
        uint32_t raw_io = KVD_SLOT_HDR_BYTES + (uint32_t)ALIGN_UP(o->len, PAGE);

        o->io_len = klass >= 0 ? kvd_slab_class_bytes(s->slab, klass) : raw_io;
        if (o->io_len == raw_io)
                return true;
        o->bounce = slot_buffer(o->io_len);
        return o->bounce != NULL;
}
