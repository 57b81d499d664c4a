/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode, policy full (FlexGen-style, exact): every stored
 * block of the layer is streamed through a ring of device slots each step,
 * and the partial attentions merge exactly (decode.c's header comment).
 */
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <kvdrive/client.h>

#include "decode.h"

static void full_size(struct run *run)
{
        run->policy_slots = 0;
        run->ring_slots = run->o.depth * run->o.batch;
}

/* Streams the n stored blocks of layer l through the ring, attending each
 * batch as it lands, then the tail. On the CPU the merges stay in double
 * (kvb_merge_double()): a long context merges thousands of partial results per layer. */
static int full_layer(struct client *cl, struct seqstate *sq, uint32_t l, uint32_t n, uint32_t tail_valid, bool rec,
                      uint32_t t)
{
        const struct run *run = cl->run;
        uint32_t batch = run->o.batch, depth = run->o.depth, chunks = (n + batch - 1) / batch, sub = 0, done = 0;

        if (acc_reset(cl) < 0)
                return -1;
        while (done < chunks) {
                while (sub < chunks && sub - done < depth) {
                        uint32_t w = sub % depth, first = sub * batch, cnt = n - first < batch ? n - first : batch;

                        for (uint32_t j = 0; j < cnt; j++) {
                                cl->refs[j] = (struct kvc_block_ref){ .layer = l, .slot = w * batch + j };
                                kvc_key_private(&sq->id, first + j, &cl->refs[j].key);
                                cl->blkid[j] = first + j;
                        }
                        if (group_submit(cl, &cl->ring[w], false, cl->refs, cl->blkid, cnt, 1) < 0)
                                return -1;
                        cl->res.got_blocks += cnt;
                        sub++;
                }
                {
                        uint32_t w = done % depth, first = done * batch, cnt = n - first < batch ? n - first : batch;

                        if (group_wait(cl, &cl->ring[w], false) < 0)
                                return -1;
                        for (uint32_t j = 0; j < cnt; j++) {
                                cl->ptrs[j] = slot_ptr(cl, w * batch + j);
                                cl->valid[j] = run->T;
                        }
                        /* In double on the CPU, not kvk_lse_merge(): one merge
                         * per batch, thousands at long contexts (decode-step.c). */
                        if (attend(cl, cnt, true) < 0 || acc_merge(cl) < 0)
                                return -1;
                        done++;
                }
        }
        cl->ptrs[0] = slot_ptr(cl, sq->tail0 + l);
        cl->valid[0] = tail_valid;
        if (attend(cl, 1, true) < 0 || acc_merge(cl) < 0 || acc_out(cl) < 0)
                return -1;
        if (rec && record(cl, t, l, NULL, n, true) < 0)
                return -1;
        return 0;
}

const struct decode_policy decode_full = {
        .name = "full",
        .size = full_size,
        .attend = full_layer,
};
