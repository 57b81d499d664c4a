/* SPDX-License-Identifier: MIT */
/*
 * The framing and the request decoder, as the daemon applies them to every
 * message it receives: kvd_frame_parse() (at the default and the largest
 * max-frame), then kvdrive__request__unpack() of the payload. What unpacks
 * must pack again to its own packed size. (protobuf-c is a system library,
 * not instrumented: libFuzzer sees the coverage of frame.c and of the
 * generated descriptors only, so this target is the shallow one; the
 * daemon targets go through the same decoder with the handlers behind.)
 */
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "fuzz.h"
#include "kvdrive.pb-c.h"

static void check_request(const uint8_t *payload, size_t len)
{
        Kvdrive__Request *req = kvdrive__request__unpack(NULL, len, payload);
        size_t n, packed;
        uint8_t *buf;

        if (!req)
                return;
        n = kvdrive__request__get_packed_size(req);
        buf = malloc(n ? n : 1);
        if (!buf)
                abort();
        packed = kvdrive__request__pack(req, buf);
        if (packed != n)
                fuzz_fail("request packed to %zu bytes, its packed size is %zu", packed, n);
        /* Not checked: that the repacked bytes unpack again. protobuf-c keeps
         * unknown fields as they came, including ones it would refuse in
         * their minimal encoding (field 0 behind a padded tag varint): its
         * business, and the daemon never repacks a request. */
        kvdrive__request__free_unpacked(req, NULL);
        free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const size_t maxes[] = { KVD_FRAME_MAX_DEFAULT, KVD_FRAME_MAX_LIMIT, 4096 };

        for (size_t i = 0; i < sizeof(maxes) / sizeof(maxes[0]); i++) {
                const uint8_t *payload = NULL;
                size_t len = 0;
                int r = kvd_frame_parse(data, size, maxes[i], &payload, &len);

                if (r < 0)
                        continue;
                if (payload != data + KVD_FRAME_HDR || len != size - KVD_FRAME_HDR || len > maxes[i])
                        fuzz_fail("kvd_frame_parse accepted %zu bytes as a payload of %zu", size, len);
                check_request(payload, len);
        }
        return 0;
}
