/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-demo: two inference processes share one KV cache through kvdrived.
 *
 * Process A "prefills" a prompt: it computes the prefix-key chain of the
 * prompt's tokens and Puts the K/V blocks of every layer. Process B, a
 * different process serving a request with the same system prompt and a
 * different question, looks up the longest cached prefix, Gets those blocks
 * into its own pool and checks every byte against what A computed.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvdrive/client.h"

#define PREFIX_TOKENS 2048      /* shared system prompt */
#define TOKENS 2304             /* + a per-request question */
#define MAX_BLOCKS (TOKENS / 16)

static const struct kvc_geometry geometry = {
        .layers = 8, .kv_heads = 8, .head_dim = 128, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};

static const char *socket_path;

/* What the "model" computes for a block: a function of key and layer, so
 * both processes know the right bytes. */
static void fill_block(void *dst, uint64_t bytes, const struct kvc_key *k, uint32_t layer)
{
        uint64_t x = k->hi ^ (k->lo * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)layer << 56);
        uint64_t *p = dst;

        for (uint64_t i = 0; i < bytes / 8; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = x;
        }
}

static void make_tokens(uint32_t *tokens, uint32_t question)
{
        for (uint32_t i = 0; i < TOKENS; i++)
                tokens[i] = i < PREFIX_TOKENS ? (i * 2654435761u) % 128000 : (question * 7919 + i) % 128000;
}

static int die(const char *who, const char *what, int r)
{
        fprintf(stderr, "kvdrive-demo %s: %s: %s\n", who, what, kvc_strerror(r));
        return EXIT_FAILURE;
}

static int run_client(const char *who, uint32_t question, bool writer)
{
        uint32_t tokens[TOKENS], prefix[16], ns;
        struct kvc_key keys[MAX_BLOCKS];
        struct kvc_block_ref refs[MAX_BLOCKS];
        uint8_t status[MAX_BLOCKS];
        uint64_t block_bytes;
        kvc_client *c = NULL;
        kvc_pool *pool = NULL;
        int n, r, ret = EXIT_FAILURE;
        uint32_t hit_blocks = 0, verified = 0, stored = 0;
        void *expect = NULL;

        make_tokens(tokens, question);
        n = kvc_key_prefix_chain(tokens, TOKENS, geometry.block_tokens, keys, MAX_BLOCKS);
        {
                char report[1024];
                struct kvc_connect_opts o = { .size = sizeof(o), .path = socket_path, .name = who,
                                              .report = report, .report_size = sizeof(report) };

                r = kvc_connect_opts(&o, &c);
                if (r < 0) {
                        fprintf(stderr, "kvdrive-demo %s: tried:\n%s", who, report);
                        return die(who, "connect", r);
                }
        }
        r = kvc_register_namespace(c, "demo/llama-3-8b/f16", &geometry, &ns, &block_bytes);
        if (r < 0) {
                ret = die(who, "register namespace", r);
                goto out;
        }
        r = kvc_pool_create(c, (uint32_t)n, block_bytes, &pool);
        if (r < 0) {
                ret = die(who, "create pool", r);
                goto out;
        }
        expect = malloc(block_bytes);
        if (!expect)
                goto out;

        r = kvc_lookup(c, ns, keys, (uint32_t)n, prefix, geometry.layers);
        if (r < 0) {
                ret = die(who, "lookup", r);
                goto out;
        }
        printf("%s (pid %d): %d blocks of %" PRIu64 " KiB per layer; cached prefix per layer:", who, (int)getpid(),
               n, block_bytes >> 10);
        for (uint32_t l = 0; l < geometry.layers; l++)
                printf(" %u", prefix[l]);
        printf("\n");

        for (uint32_t l = 0; l < geometry.layers; l++) {
                uint32_t cached = writer ? 0 : prefix[l];

                /* Load what is cached, compute ("prefill") and store the rest. */
                for (uint32_t i = 0; i < cached; i++)
                        refs[i] = (struct kvc_block_ref){ keys[i], l, i, 0 };
                if (cached) {
                        r = kvc_get(c, ns, pool, refs, cached, status);
                        if (r < 0) {
                                ret = die(who, "get", r);
                                goto out;
                        }
                        for (uint32_t i = 0; i < cached; i++) {
                                if (status[i] != KVC_ITEM_OK)
                                        continue;
                                hit_blocks++;
                                fill_block(expect, block_bytes, &keys[i], l);
                                if (memcmp(expect, kvc_pool_slot(pool, i), block_bytes) != 0) {
                                        fprintf(stderr, "%s: block %u layer %u differs from what A stored\n", who, i, l);
                                        goto out;
                                }
                                verified++;
                        }
                }
                for (uint32_t i = cached; i < (uint32_t)n; i++) {
                        fill_block(kvc_pool_slot(pool, i), block_bytes, &keys[i], l);
                        refs[i - cached] = (struct kvc_block_ref){ keys[i], l, i, 0 };
                }
                if ((uint32_t)n > cached) {
                        r = kvc_put(c, ns, pool, refs, (uint32_t)n - cached, status);
                        if (r < 0) {
                                ret = die(who, "put", r);
                                goto out;
                        }
                        stored += (uint32_t)r;
                }
        }
        if (writer)
                printf("%s: stored %u new blocks (%d blocks x %u layers computed)\n", who, stored, n, geometry.layers);
        else
                printf("%s: loaded %u cached blocks instead of recomputing them, %u verified byte for byte; "
                       "stored %u new blocks\n", who, hit_blocks, verified, stored);
        ret = writer || (hit_blocks == verified && hit_blocks >= PREFIX_TOKENS / 16 * geometry.layers)
                      ? EXIT_SUCCESS
                      : EXIT_FAILURE;
        if (ret != EXIT_SUCCESS)
                fprintf(stderr, "%s: expected the %u shared prefix blocks to be cached\n", who,
                        PREFIX_TOKENS / 16 * geometry.layers);
out:
        free(expect);
        kvc_pool_free(pool);
        kvc_disconnect(c);
        return ret;
}

static int in_child(const char *who, uint32_t question, bool writer)
{
        int status;
        pid_t pid = fork();

        if (pid < 0)
                return EXIT_FAILURE;
        if (pid == 0) {
                fflush(stdout);
                _exit(run_client(who, question, writer));
        }
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status))
                return EXIT_FAILURE;
        return WEXITSTATUS(status);
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c;

        while ((c = getopt_long(argc, argv, "s:h", opts, NULL)) != -1) {
                switch (c) {
                case 's':
                        socket_path = optarg;
                        break;
                case 'h':
                        printf("Usage: kvdrive-demo [--socket PATH]\n\nTwo processes share KV blocks "
                               "through kvdrived.\n");
                        return EXIT_SUCCESS;
                default:
                        return EXIT_FAILURE;
                }
        }
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (in_child("A", 1, true) != EXIT_SUCCESS)
                return EXIT_FAILURE;
        return in_child("B", 2, false);
}
