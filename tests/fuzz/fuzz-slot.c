/* SPDX-License-Identifier: MIT */
/*
 * The SSD format's checks (kvdrived/tiers/slot.c) on headers from the input,
 * as recovery and reads apply them to what they find on disk.
 *
 * Input: u8 flags, then an extent header, a slot header and a payload (each
 * as many bytes as the struct; what is missing is zero). Flags bit 0 seals
 * the extent header, bit 1 the slot header, bit 2 sets the payload crc, so
 * that inputs get past the crcs to the checks behind them. The checks must
 * agree with each other and with the format's bounds, for uncompressed
 * reads and reads of any codec (kvd_slot_matches_any()).
 */
#include <string.h>

#include "fuzz.h"
#include "slot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static uint8_t payload[64 << 10];
        struct kvd_extent_header eh = { 0 };
        struct kvd_slot_header h = { 0 };
        uint8_t flags;
        size_t n, plen;
        bool valid, torn, rec, match;

        if (size < 1)
                return 0;
        flags = data[0];
        data++;
        size--;
        n = size < sizeof(eh) ? size : sizeof(eh);
        memcpy(&eh, data, n);
        data += n;
        size -= n;
        n = size < sizeof(h) ? size : sizeof(h);
        memcpy(&h, data, n);
        data += n;
        size -= n;
        plen = size < sizeof(payload) ? size : sizeof(payload);
        memcpy(payload, data, plen);
        if (flags & 1)
                kvd_extent_header_seal(&eh);
        if (flags & 4)
                h.payload_crc = kvd_slot_crc(payload, h.payload_len <= plen ? h.payload_len : plen);
        if (flags & 2)
                kvd_slot_header_seal(&h);

        if (kvd_extent_header_valid(&eh) && (eh.magic != KVD_EXTENT_MAGIC || eh.version != KVD_FORMAT_VERSION))
                fuzz_fail("an extent header of magic %x version %u passed", eh.magic, eh.version);
        valid = kvd_slot_header_valid(&h, eh.generation);
        torn = kvd_slot_header_torn(&h);
        rec = kvd_slot_header_recoverable(&h, eh.generation, eh.slot_bytes);
        if (valid && torn)
                fuzz_fail("a slot header both valid and torn");
        if (torn && h.magic != KVD_SLOT_MAGIC)
                fuzz_fail("a slot header without the magic counted as torn");
        if (valid && (h.magic != KVD_SLOT_MAGIC || h.version != KVD_SLOT_VERSION ||
                      h.extent_generation != eh.generation))
                fuzz_fail("a slot header of magic %x version %u generation %llu passed", h.magic, h.version,
                          (unsigned long long)h.extent_generation);
        if (rec && !valid)
                fuzz_fail("an invalid slot header is recoverable");
        /* A recovered slot's payload must fit its slot after the header, in
         * whole bytes, with no wrap-around. */
        if (rec && (uint64_t)h.payload_len + KVD_SLOT_HDR_BYTES > (uint64_t)eh.slot_bytes)
                fuzz_fail("payload_len %u recoverable in a slot of %u bytes", h.payload_len, eh.slot_bytes);
        if (h.payload_len <= plen) {
                match = kvd_slot_matches(&h, eh.generation, h.key_hi, h.key_lo, h.layer, payload, h.payload_len);
                if (match && (!valid || h.codec != KVD_CODEC_NONE ||
                              h.payload_crc != kvd_slot_crc(payload, h.payload_len)))
                        fuzz_fail("a read matched a slot it must refuse");
                if (match && h.payload_len > 0 &&
                    kvd_slot_matches(&h, eh.generation, h.key_hi ^ 1, h.key_lo, h.layer, payload, h.payload_len))
                        fuzz_fail("a read matched another key");
        }
        /* Any codec: the encoded payload must lie in the buffer read, and its
         * length be one the codec writes for the namespace's raw block
         * (taken here as plen bytes). */
        match = kvd_slot_matches_any(&h, eh.generation, h.key_hi, h.key_lo, h.layer, payload, (uint32_t)plen,
                                     (uint32_t)plen);
        if (match && (!valid || h.payload_len > plen || !kvd_slot_payload_len_ok(&h, (uint32_t)plen) ||
                      h.payload_crc != kvd_slot_crc(payload, h.payload_len)))
                fuzz_fail("a read of any codec matched a slot it must refuse");
        if (match && h.codec == KVD_CODEC_NONE && h.payload_len != plen)
                fuzz_fail("an uncompressed payload of %u bytes matched a %zu-byte block", h.payload_len, plen);
        return 0;
}
