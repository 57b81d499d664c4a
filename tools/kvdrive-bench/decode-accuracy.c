/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: accuracy. During decode, record() keeps the
 * selection and the output of every --accuracy-every step; after the
 * timed phase, accuracy() compares them with full attention over the
 * trace's K/V (metrics.h).
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "kernels.h"
#include "metrics.h"
#include "trace.h"

int record(struct client *cl, uint32_t t, uint32_t l, const uint32_t *sel, uint32_t nsel, bool all)
{
        const struct run *run = cl->run;
        struct acc_rec *r;

        if (cl->n_recs == run->acc_records)
                return 0;
        if (run->dev->out_to_host(cl) < 0)
                return -1;
        r = &cl->recs[cl->n_recs];
        r->step = t;
        r->layer = l;
        r->nsel = nsel;
        r->sel = cl->rec_sel + (size_t)cl->n_recs * run->max_blocks;
        r->out = cl->rec_out + (size_t)cl->n_recs * run->qd;
        for (uint32_t i = 0; i < nsel; i++)
                r->sel[i] = all ? i : sel[i];
        memcpy(r->out, cl->out, sizeof(float) * run->qd);
        cl->n_recs++;
        return 0;
}

/* ---- accuracy, after the timed phase ----------------------------------- */

int accuracy(struct client *cl)
{
        const struct run *run = cl->run;
        size_t bb = run->block_bytes;
        float *ref = NULL, *mass = cl->scores;
        uint8_t *buf = NULL;
        int ret = -1;

        cl->res.mass_min = 1;
        if (cl->n_recs == 0)
                return 0;
        buf = malloc(bb * run->max_blocks);
        ref = malloc(sizeof(float) * run->qd);
        if (!buf || !ref) {
                child_fail(cl, "out of memory for the accuracy reference");
                goto out;
        }
        for (uint32_t l = 0; l < run->layers; l++) {
                bool built = false;

                for (uint32_t ri = 0; ri < cl->n_recs; ri++) {
                        const struct acc_rec *r = &cl->recs[ri];
                        uint32_t pos = run->prompt + r->step, n = pos / run->T;
                        double mr, tr, err;

                        if (r->layer != l)
                                continue;
                        if (!built) {   /* layer l in block layout, straight from the trace */
                                for (uint32_t b = 0; b < run->max_blocks; b++) {
                                        uint32_t end = (b + 1) * run->T;

                                        copy_tokens(run, l, b, b * run->T, end < run->m->tokens ? end : run->m->tokens,
                                                    buf + (size_t)b * bb);
                                }
                                built = true;
                        }
                        for (uint32_t b = 0; b <= n; b++) {
                                cl->ptrs[b] = buf + (size_t)b * bb;
                                cl->valid[b] = b < n ? run->T : pos % run->T + 1;
                        }
                        load_query(run, r->step, l, cl->q);
                        if (kvk_block_attention_mass(&run->shape, cl->q, cl->ptrs, cl->valid, n + 1, mass) < 0 ||
                            kvb_reference_attention(&run->shape, cl->q, cl->ptrs, cl->valid, n + 1, cl->part, cl->plse, cl->acc, cl->acc_lse, ref) < 0) {
                                child_fail(cl, "reference attention failed");
                                goto out;
                        }
                        /* The tail is attended by every policy. */
                        memcpy(cl->sel2, r->sel, sizeof(uint32_t) * r->nsel);
                        cl->sel2[r->nsel] = n;
                        mr = kvb_mass_recall(mass, n + 1, cl->sel2, r->nsel + 1);
                        err = kvb_rel_l2_error(r->out, ref, run->qd);
                        if (mr < 0) {
                                child_fail(cl, "mass recall: %s", strerror((int)-mr));
                                goto out;
                        }
                        cl->res.acc_samples++;
                        cl->res.mass_sum += mr;
                        /* The best any choice of as many blocks could keep (the
                         * same forced sink and local blocks, the rest by mass). */
                        {
                                uint32_t k = n > 0 && r->nsel > 0 ? kvk_topk(mass, n, r->nsel, run->o.sink,
                                                                             run->o.local, cl->blkid)
                                                                  : 0;

                                cl->blkid[k] = n;
                                cl->res.oracle_sum += kvb_mass_recall(mass, n + 1, cl->blkid, k + 1);
                        }
                        if (mr < cl->res.mass_min)
                                cl->res.mass_min = mr;
                        cl->res.err_sum += err;
                        if (!(err <= cl->res.err_max))  /* NaN sticks */
                                cl->res.err_max = err;
                        if (n > 0 && r->nsel > 0) {
                                tr = kvb_topk_recall(mass, n, r->sel, r->nsel, r->nsel);
                                if (tr < 0) {
                                        child_fail(cl, "top-k recall: %s", strerror((int)-tr));
                                        goto out;
                                }
                                cl->res.topk_sum += tr;
                                cl->res.topk_samples++;
                        }
                }
        }
        ret = 0;
out:
        free(buf);
        free(ref);
        return ret;
}
