/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode --device cpu (the default): the "device pool" is a
 * memfd pool in the client's memory and every kernel is the CPU one of
 * kernels.h; OUT, PART and ACC are the client's host buffers (out and
 * out_lse; part and plse; acc and acc_lse, merged in double). Nothing is
 * queued: writes and summaries are done when they return.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <kvdrive/client.h>

#include "decode.h"
#include "kernels.h"

struct cpu_dev {
        float *summ;                    /* [layers][max_blocks][sum_floats] */
        float *work;                    /* kvk_method_scores()'s */
};

static float *summary_of(const struct client *cl, uint32_t l, uint32_t b)
{
        const struct cpu_dev *x = cl->dev;

        return x->summ + ((size_t)l * cl->run->max_blocks + b) * cl->run->sum_floats;
}

static int cpu_probe(void)
{
        return 0;
}

static int cpu_client_init(struct client *cl)
{
        const struct run *run = cl->run;
        struct cpu_dev *x = calloc(1, sizeof(*x));
        int r;

        if (!x)
                return child_fail(cl, "out of memory");
        cl->dev = x;
        x->summ = calloc((size_t)run->layers * run->max_blocks * run->sum_floats, sizeof(float));
        x->work = malloc(sizeof(float) * (kvk_method_work_floats(&run->shape, run->o.method, run->max_blocks) + 1));
        if (!x->summ || !x->work)
                return child_fail(cl, "out of memory");
        r = kvc_pool_create(cl->c, run->pool_slots, run->block_bytes, &cl->pool);
        return r < 0 ? daemon_fail(cl, "create the device pool", r) : 0;
}

static void cpu_client_free(struct client *cl)
{
        struct cpu_dev *x = cl->dev;

        if (!x)
                return;
        free(x->summ);
        free(x->work);
        free(x);
        cl->dev = NULL;
}

static int cpu_write_tokens(struct client *cl, uint32_t slot, uint32_t l, uint32_t b, uint32_t from, uint32_t to)
{
        copy_tokens(cl->run, l, b, from, to, slot_ptr(cl, slot));
        return 0;
}

static int cpu_summarise(struct client *cl, uint32_t slot, uint32_t valid, uint32_t l, uint32_t b)
{
        kvk_method_summary(&cl->run->shape, cl->run->o.method, slot_ptr(cl, slot), valid, summary_of(cl, l, b));
        return 0;
}

static int cpu_nothing(struct client *cl)
{
        (void)cl;
        return 0;
}

static int cpu_scores(struct client *cl, uint32_t l, const float *q, uint32_t n, float *ret)
{
        const struct cpu_dev *x = cl->dev;

        kvk_method_scores(&cl->run->shape, cl->run->o.method, q, summary_of(cl, l, 0), n, x->work, ret);
        return 0;
}

static int cpu_select(struct client *cl, uint32_t l, const float *q, uint32_t n, uint32_t k, uint32_t *ret)
{
        const struct run *run = cl->run;

        cpu_scores(cl, l, q, n, cl->scores);
        return (int)kvk_topk(cl->scores, n, k, run->o.sink, run->o.local, ret);
}

static int cpu_attend(struct client *cl, uint32_t n, bool part)
{
        int r = kvk_decode_attention(&cl->run->shape, cl->q, cl->ptrs, cl->valid, n, part ? cl->part : cl->out,
                                     part ? cl->plse : cl->out_lse);

        return r < 0 ? child_fail(cl, "attention: %s", strerror(-r)) : 0;
}

static int cpu_merge_out(struct client *cl)
{
        int r = kvk_lse_merge(&cl->run->shape, cl->out, cl->out_lse, cl->part, cl->plse);

        return r < 0 ? child_fail(cl, "merge: %s", strerror(-r)) : 0;
}

static int cpu_acc_reset(struct client *cl)
{
        const struct run *run = cl->run;

        for (uint32_t h = 0; h < run->m->q_heads; h++)
                cl->acc_lse[h] = -INFINITY;
        memset(cl->acc, 0, sizeof(double) * run->qd);
        return 0;
}

/* In double (kvb_merge_double(), metrics.h says why). */
static int cpu_acc_merge(struct client *cl)
{
        kvb_merge_double(cl->acc, cl->acc_lse, cl->part, cl->plse, cl->run->m->q_heads, cl->run->m->head_dim);
        return 0;
}

static int cpu_acc_out(struct client *cl)
{
        for (size_t i = 0; i < cl->run->qd; i++)
                cl->out[i] = (float)cl->acc[i];
        return 0;
}

const struct decode_device decode_device_cpu = {
        .name = "cpu",
        .probe = cpu_probe,
        .client_init = cpu_client_init,
        .client_free = cpu_client_free,
        .write_tokens = cpu_write_tokens,
        .summarise = cpu_summarise,
        .sync = cpu_nothing,
        .set_query = cpu_nothing,
        .scores = cpu_scores,
        .select = cpu_select,
        .attend = cpu_attend,
        .merge_out = cpu_merge_out,
        .acc_reset = cpu_acc_reset,
        .acc_merge = cpu_acc_merge,
        .acc_out = cpu_acc_out,
        .out_to_host = cpu_nothing,
};
