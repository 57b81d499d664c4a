/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench decode: one client process (decode.c forks them): set-up,
 * prefill, the decode steps (decode-step.c), accuracy (decode-accuracy.c),
 * and its messages to the parent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "decode.h"
#include "kernels.h"

/* ---- client helpers ------------------------------------------------- */

__attribute__((format(printf, 2, 3)))
int child_fail(const struct client *cl, const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "kvdrive-bench decode: client %u: ", cl->idx);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        return -1;
}

int daemon_fail(const struct client *cl, const char *what, int err)
{
        const char *msg = cl->c ? kvc_last_error(cl->c) : "";

        return child_fail(cl, "%s: %s%s%s", what, kvc_strerror(err), *msg ? ": " : "", msg);
}

/* ---- prefill ---------------------------------------------------------- */

/*
 * Puts every full block of the prompt of every layer of every sequence,
 * chunk (block index) by chunk, layer by layer, as a chunked prefill writes
 * them: the newest blocks are the last written, and stay in host memory.
 * A ring of `depth` Puts of `batch` blocks goes through the first slots.
 */
static int prefill(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t seqs = run->o.seqs, layers = run->layers;
        uint32_t total = run->prompt / run->T * layers * seqs, depth = run->o.depth, batch = run->o.batch;
        uint32_t sub = 0, done = 0;
        uint64_t t0 = bench_now_ns();

        if (batch > run->pool_slots)
                batch = run->pool_slots;
        if (depth * batch > run->pool_slots)
                depth = run->pool_slots / batch;
        while (done < total) {
                while (sub < total && sub - done < depth * batch) {
                        uint32_t w = (sub / batch) % depth, cnt = total - sub < batch ? total - sub : batch;

                        for (uint32_t j = 0; j < cnt; j++) {
                                uint32_t i = sub + j, s = i % seqs, l = (i / seqs) % layers, b = i / (seqs * layers);
                                uint32_t slot = w * batch + j;

                                if (run->dev->write_tokens(cl, slot, l, b, b * run->T, (b + 1) * run->T) < 0)
                                        return -1;
                                /* The sequences replay one trace: one summary serves them all. */
                                if (s == 0 && run->dev->summarise(cl, slot, run->T, l, b) < 0)
                                        return -1;
                                cl->refs[j] = (struct kvc_block_ref){ .layer = l, .slot = slot };
                                block_key(cl, &cl->seqs[s], b, &cl->refs[j].key);
                                cl->blkid[j] = b;
                        }
                        /* The daemon reads the slots: the tokens must have landed. */
                        if (run->dev->sync(cl) < 0 ||
                            group_submit(cl, &cl->ring[w], true, cl->refs, cl->blkid, cnt, 1) < 0)
                                return -1;
                        sub += cnt;
                }
                if (group_wait(cl, &cl->ring[(done / batch) % depth], true) < 0)
                        return -1;
                done += total - done < batch ? total - done : batch;
        }
        cl->res.prefill_blocks = total;
        cl->res.prefill_ns = bench_now_ns() - t0;
        cl->res.wait_ns = 0;
        return 0;
}

/* ---- client set-up ----------------------------------------------------- */

static int client_alloc(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t mb = run->max_blocks, scratch = mb > run->o.batch ? mb : run->o.batch, kmax = run->kmax ? run->kmax : 1;

        cl->scores = calloc(mb + 1, sizeof(float));
        cl->q = calloc(run->qd, sizeof(float));
        cl->q0 = calloc(run->qd, sizeof(float));
        cl->out = calloc(run->qd, sizeof(float));
        cl->part = calloc(run->qd, sizeof(float));
        cl->acc = calloc(run->qd, sizeof(double));
        cl->acc_lse = calloc(run->m->q_heads, sizeof(double));
        cl->plse = calloc(run->m->q_heads, sizeof(float));
        cl->out_lse = calloc(run->m->q_heads, sizeof(float));
        cl->ptrs = calloc(scratch + 1, sizeof(*cl->ptrs));
        cl->valid = calloc(scratch + 1, sizeof(*cl->valid));
        cl->refs = calloc(scratch, sizeof(*cl->refs));
        cl->blkid = calloc(scratch, sizeof(*cl->blkid));
        cl->sel2 = calloc(scratch + 1, sizeof(*cl->sel2));
        cl->seqs = calloc(run->o.seqs, sizeof(*cl->seqs));
        cl->recs = calloc(run->acc_records ? run->acc_records : 1, sizeof(*cl->recs));
        cl->rec_sel = calloc((size_t)(run->acc_records ? run->acc_records : 1) * mb, sizeof(uint32_t));
        cl->rec_out = calloc((size_t)(run->acc_records ? run->acc_records : 1) * run->qd, sizeof(float));
        cl->lat = calloc(run->steps, sizeof(*cl->lat));
        if (!cl->scores || !cl->q || !cl->q0 || !cl->out || !cl->part || !cl->acc || !cl->acc_lse || !cl->plse || !cl->out_lse ||
            !cl->ptrs || !cl->valid || !cl->refs || !cl->blkid || !cl->sel2 || !cl->seqs || !cl->recs ||
            !cl->rec_sel || !cl->rec_out || !cl->lat)
                return -ENOMEM;
        for (uint32_t d = 0; d < MAX_DEPTH; d++)
                if (group_init(&cl->ring[d], run->o.batch) < 0)
                        return -ENOMEM;
        for (uint32_t s = 0; s < run->o.seqs; s++) {
                struct seqstate *sq = &cl->seqs[s];
                uint32_t per = run->policy_slots + run->layers;

                sq->slot0 = run->ring_slots + s * per;
                sq->tail0 = sq->slot0 + run->policy_slots;
                sq->put_id = calloc(run->layers, sizeof(*sq->put_id));
                sq->put_st = calloc(run->layers, 1);
                sq->sel = calloc(kmax, sizeof(uint32_t));
                sq->sel_slot = calloc(kmax, sizeof(uint32_t));
                if (!sq->put_id || !sq->put_st || !sq->sel || !sq->sel_slot || group_init(&sq->demand, kmax) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static void client_free(struct client *cl)
{
        const struct run *run = cl->run;
        const struct decode_policy *pol = run->pol;

        for (uint32_t s = 0; cl->seqs && s < run->o.seqs; s++) {
                struct seqstate *sq = &cl->seqs[s];

                if (pol->seq_free)
                        pol->seq_free(cl, sq);
                free(sq->put_id);
                free(sq->put_st);
                free(sq->sel);
                free(sq->sel_slot);
                group_free(&sq->demand);
        }
        if (pol->client_free)
                pol->client_free(cl);
        for (uint32_t d = 0; d < MAX_DEPTH; d++)
                group_free(&cl->ring[d]);
        free(cl->seqs);
        free(cl->scores);
        free(cl->q);
        free(cl->q0);
        free(cl->out);
        free(cl->part);
        free(cl->acc);
        free(cl->acc_lse);
        free(cl->plse);
        free(cl->out_lse);
        free(cl->ptrs);
        free(cl->valid);
        free(cl->refs);
        free(cl->blkid);
        free(cl->sel2);
        free(cl->recs);
        free(cl->rec_sel);
        free(cl->rec_out);
        free(cl->lat);
        cl->pool = kvc_pool_free(cl->pool);
        cl->c = kvc_disconnect(cl->c);
        /* A CUDA pool's memory outlives the session that shared it. */
        run->dev->client_free(cl);
}

static int client_setup(struct client *cl)
{
        const struct run *run = cl->run;
        uint64_t bb = 0;
        int r;

        if (client_alloc(cl) < 0)
                return child_fail(cl, "out of memory");
        r = kvc_connect(run->o.socket, "kvdrive-bench decode", &cl->c);
        if (r < 0)
                return child_fail(cl, "cannot reach kvdrived: %s", kvc_strerror(r));
        r = kvc_register_namespace(cl->c, run->ns_name, &run->g, &cl->ns, &bb);
        if (r < 0)
                return daemon_fail(cl, "register namespace", r);
        if (bb != run->block_bytes)
                return child_fail(cl, "namespace %s has %" PRIu64 "-byte blocks, not %" PRIu64, run->ns_name, bb,
                                  run->block_bytes);
        cl->max_items = kvc_max_items(cl->c);
        if (cl->max_items < run->o.batch)
                return child_fail(cl, "--batch %u is above the daemon's %u items per request", run->o.batch,
                                  cl->max_items);
        if (run->dev->client_init(cl) < 0)
                return -1;
        if (run->pol->client_init && run->pol->client_init(cl) < 0)
                return -1;
        for (uint32_t s = 0; s < run->o.seqs; s++) {
                r = kvc_key_sequence_new(&cl->seqs[s].id);
                if (r < 0)
                        return child_fail(cl, "sequence id: %s", strerror(-r));
                if (run->pol->seq_init && run->pol->seq_init(cl, &cl->seqs[s]) < 0)
                        return -1;
        }
        return 0;
}

static int send_all(int fd, const void *buf, size_t n)
{
        const uint8_t *p = buf;

        while (n) {
                ssize_t w = write(fd, p, n);

                if (w < 0 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -1;
                p += w;
                n -= (size_t)w;
        }
        return 0;
}

static int send_msg(struct client *cl, uint32_t type)
{
        cl->res.type = type;
        if (send_all(cl->up, &cl->res, sizeof(cl->res)) < 0)
                return child_fail(cl, "lost the parent: %s", strerror(errno));
        return 0;
}

static int wait_go(struct client *cl)
{
        char go;

        if (read(cl->down, &go, 1) != 1)
                return child_fail(cl, "lost the parent");
        return 0;
}

static void delete_all(struct client *cl)
{
        const struct run *run = cl->run;
        uint32_t stored = (run->prompt + run->steps) / run->T, max = cl->max_items ? cl->max_items : 1;
        struct kvc_key *keys = calloc(max, sizeof(*keys));

        for (uint32_t s = 0; keys && s < run->o.seqs; s++) {
                for (uint32_t first = 0; first < stored; first += max) {
                        uint32_t cnt = stored - first < max ? stored - first : max;

                        for (uint32_t i = 0; i < cnt; i++)
                                block_key(cl, &cl->seqs[s], first + i, &keys[i]);
                        kvc_delete(cl->c, cl->ns, keys, cnt, -1);
                }
        }
        free(keys);
}

/* The body of one client process. Returns its exit status. */
int client_main(struct client *cl)
{
        const struct run *run = cl->run;
        bool progress = isatty(STDERR_FILENO);
        int ret = EXIT_FAILURE;

        if (client_setup(cl) < 0 || prefill(cl) < 0 || send_msg(cl, MSG_READY) < 0 || wait_go(cl) < 0)
                goto out;
        cl->res.start_ns = bench_now_ns();
        for (uint32_t t = 0, shown = 0; t < run->steps; t++) {
                uint64_t t0 = bench_now_ns();

                if (decode_step(cl, t) < 0)
                        goto out_delete;
                cl->lat[t] = bench_now_ns() - t0;
                /* Progress on a terminal, from the first client, twice a second. */
                if (cl->idx == 0 && progress && (t + 1 == run->steps || (t0 - cl->res.start_ns) / 500000000u > shown)) {
                        shown = (uint32_t)((t0 - cl->res.start_ns) / 500000000u);
                        fprintf(stderr, "\rdecode: step %u of %u%s", t + 1, run->steps, t + 1 == run->steps ? "\n" : "");
                }
        }
        cl->res.end_ns = bench_now_ns();
        if (run->pol->finish)
                run->pol->finish(cl);
        cl->res.steps = run->steps;
        cl->res.tokens = (uint64_t)run->steps * run->o.seqs;
        if (send_msg(cl, MSG_DONE) < 0 || wait_go(cl) < 0)
                goto out_delete;
        if (accuracy(cl) < 0)
                goto out_delete;
        cl->res.n_lat = run->steps;
        if (send_msg(cl, MSG_RESULT) < 0)
                goto out_delete;
        if (send_all(cl->up, cl->lat, sizeof(*cl->lat) * run->steps) < 0) {
                child_fail(cl, "lost the parent");
                goto out_delete;
        }
        ret = EXIT_SUCCESS;
out_delete:
        delete_all(cl);
out:
        client_free(cl);
        return ret;
}
