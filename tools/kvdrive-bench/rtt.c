/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench rtt: the control path's round trip beside a bare socket's.
 *
 * Three round trips, interleaved one after another so that each sees the
 * same machine at the same moment:
 *
 *   echo    a 64-byte message to a process of ours that waits in
 *           epoll_wait() on a SOCK_SEQPACKET socketpair and sends it back
 *           (the physical limit of a request: two wake-ups and two socket
 *           passes, nothing else)
 *   lookup  kvc_lookup() of one key cached at every layer (the event loop
 *           answers it alone)
 *   get     kvc_get() of that one 8 KiB block (the loop hands the copy to a
 *           transfer worker and sends the reply when the worker is done)
 *
 * first with the machine otherwise idle, then with --load processes that
 * spin on the CPU (at the same priority as everything else), as a busy
 * inference host has. Per load it prints p50 and p99 of each (medians over
 * --repeat runs, with their range) and each one's p50 over echo's p50 (the
 * median of the runs' ratios). Every figure is measured.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"

#define NS_NAME "bench-rtt"
#define MSG_BYTES 64u
#define MAX_REPEAT 32
#define MAX_LOAD 64

enum kind { K_ECHO, K_LOOKUP, K_GET, K_COUNT };

static const char *const kind_names[K_COUNT] = { "echo", "lookup", "get" };

static const struct kvc_geometry geom = {
        .layers = 4, .kv_heads = 2, .head_dim = 64, .dtype = KVC_DTYPE_F16, .block_tokens = 16,
};

struct opts {
        const char *socket;
        uint32_t samples, repeat, load;
        int64_t poll_us;        /* kvc_set_poll_us(), -1: the library's default */
};

struct target {
        int echo_fd;
        pid_t echo_pid;
        kvc_client *c;
        uint32_t ns;
        kvc_pool *pool;
        struct kvc_block_ref ref;
};

/* The echo process: what a one-thread epoll server does, and nothing more. */
static int echo_serve(int fd)
{
        struct epoll_event ev = { .events = EPOLLIN };
        char buf[MSG_BYTES];
        int ep = epoll_create1(EPOLL_CLOEXEC);

        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                return 1;
        for (;;) {
                ssize_t n;

                if (epoll_wait(ep, &ev, 1, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return 1;
                }
                n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n == 0)
                        return 0;
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                continue;
                        return 1;
                }
                if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) != n)
                        return 1;
        }
}

static pid_t spawn_echo(int *ret_fd)
{
        int sv[2];
        pid_t pid;

        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(sv[0]);
                _exit(echo_serve(sv[1]));
        }
        close(sv[1]);
        *ret_fd = sv[0];
        return pid;
}

static pid_t spawn_spinner(void)
{
        pid_t pid;

        fflush(NULL);
        pid = fork();
        if (pid == 0) {
                volatile uint64_t x = 0;

                prctl(PR_SET_PDEATHSIG, SIGKILL);
                for (;;)
                        x++;
        }
        return pid;
}

static void stop_all(pid_t *pids, uint32_t n)
{
        for (uint32_t i = 0; i < n; i++)
                if (pids[i] > 0)
                        kill(pids[i], SIGKILL);
        for (uint32_t i = 0; i < n; i++)
                if (pids[i] > 0)
                        waitpid(pids[i], NULL, 0);
}

/* One round trip of kind k; its microseconds, or a negative errno. */
static double one(struct target *t, enum kind k)
{
        uint32_t prefix[4];
        char msg[MSG_BYTES] = { 1 };
        uint64_t t0 = bench_now_ns();
        uint8_t st;
        int rc;

        switch (k) {
        case K_ECHO:
                if (send(t->echo_fd, msg, sizeof(msg), MSG_NOSIGNAL) != (ssize_t)sizeof(msg) ||
                    recv(t->echo_fd, msg, sizeof(msg), 0) != (ssize_t)sizeof(msg))
                        return -EIO;
                break;
        case K_LOOKUP:
                rc = kvc_lookup(t->c, t->ns, &t->ref.key, 1, prefix, geom.layers);
                if (rc < 0)
                        return rc;
                if (prefix[0] != 1)
                        return -ENOENT;
                break;
        case K_GET:
                rc = kvc_get(t->c, t->ns, t->pool, &t->ref, 1, &st);
                if (rc < 0)
                        return rc;
                if (st != KVC_ITEM_OK)
                        return -ENOENT;
                break;
        default:
                return -EINVAL;
        }
        return (double)(bench_now_ns() - t0) / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return (x > y) - (x < y);
}

/* One run: samples round trips of each kind, interleaved (the order
 * rotates every round); p50 and p99 of each. */
static int one_run(struct target *t, uint32_t samples, double p50[K_COUNT], double p99[K_COUNT])
{
        double *lat[K_COUNT] = { 0 };
        int rc = 0;

        for (int k = 0; k < K_COUNT; k++) {
                lat[k] = malloc(samples * sizeof(double));
                if (!lat[k])
                        rc = -ENOMEM;
        }
        for (uint32_t i = 0; rc == 0 && i < samples; i++)
                for (int j = 0; rc == 0 && j < K_COUNT; j++) {
                        int k = (int)((i + (uint32_t)j) % K_COUNT);
                        double us = one(t, (enum kind)k);

                        if (us < 0)
                                rc = (int)us;
                        else
                                lat[k][i] = us;
                }
        for (int k = 0; k < K_COUNT; k++) {
                if (rc == 0) {
                        qsort(lat[k], samples, sizeof(double), cmp_double);
                        p50[k] = lat[k][samples / 2];
                        p99[k] = lat[k][(size_t)((double)samples * 0.99)];
                }
                free(lat[k]);
        }
        return rc;
}

static void range(const double *v, uint32_t n, double *lo, double *hi)
{
        *lo = *hi = v[0];
        for (uint32_t i = 1; i < n; i++) {
                *lo = v[i] < *lo ? v[i] : *lo;
                *hi = v[i] > *hi ? v[i] : *hi;
        }
}

static int measure(const struct opts *o, struct target *t, uint32_t load)
{
        double p50[K_COUNT][MAX_REPEAT], p99[K_COUNT][MAX_REPEAT], ratio[K_COUNT][MAX_REPEAT];
        pid_t spin[MAX_LOAD] = { 0 };
        int rc = 0;

        for (uint32_t i = 0; i < load; i++)
                if ((spin[i] = spawn_spinner()) < 0)
                        rc = -errno;
        for (uint32_t r = 0; rc == 0 && r < o->repeat; r++) {
                double a[K_COUNT], b[K_COUNT];

                rc = one_run(t, o->samples, a, b);
                for (int k = 0; rc == 0 && k < K_COUNT; k++) {
                        p50[k][r] = a[k];
                        p99[k][r] = b[k];
                        ratio[k][r] = a[k] / a[K_ECHO];
                }
        }
        stop_all(spin, load);
        if (rc < 0)
                return rc;
        for (int k = 0; k < K_COUNT; k++) {
                double lo50, hi50, lo99, hi99, lor, hir, m50, m99, mr;

                range(p50[k], o->repeat, &lo50, &hi50);
                range(p99[k], o->repeat, &lo99, &hi99);
                range(ratio[k], o->repeat, &lor, &hir);
                m50 = bench_median(p50[k], o->repeat);
                m99 = bench_median(p99[k], o->repeat);
                mr = bench_median(ratio[k], o->repeat);
                printf("%4u  %-7s %8.1f [%6.1f-%6.1f] %9.1f [%7.1f-%7.1f]   %5.2fx [%.2f-%.2f]\n", load,
                       kind_names[k], m50, lo50, hi50, m99, lo99, hi99, mr, lor, hir);
        }
        fflush(stdout);
        return 0;
}

static void usage(FILE *f)
{
        fprintf(f, "usage: kvdrive-bench rtt --socket PATH [--load N] [--samples N] [--repeat N] [--poll-us N]\n"
                   "  Round trips of a bare SEQPACKET echo, a Lookup and a one-block Get, interleaved,\n"
                   "  on an idle machine and with N spinning processes (default: 2 x the CPUs).\n"
                   "  --samples  round trips of each kind per run (default 20000)\n"
                   "  --repeat   runs per load (default 5)\n"
                   "  --poll-us  the client's reply poll window (kvc_set_poll_us; default: the library's)\n");
}

static int setup(const struct opts *o, struct target *t)
{
        struct kvc_key seq = { 0x7274745f62656e63ull, 0x5eed };
        int rc;

        t->echo_pid = spawn_echo(&t->echo_fd);
        if (t->echo_pid < 0)
                return (int)t->echo_pid;
        rc = kvc_connect(o->socket, "bench-rtt", &t->c);
        if (rc < 0) {
                fprintf(stderr, "kvdrive-bench rtt: cannot connect to %s: %s\n", o->socket, kvc_strerror(rc));
                return rc;
        }
        if (o->poll_us >= 0)
                rc = kvc_set_poll_us(t->c, (uint32_t)o->poll_us);
        if (rc == 0)
                rc = kvc_register_namespace(t->c, NS_NAME, &geom, &t->ns, NULL);
        if (rc == 0)
                rc = kvc_pool_create(t->c, 1, kvc_block_bytes(&geom), &t->pool);
        kvc_key_private(&seq, 0, &t->ref.key);
        for (uint32_t l = 0; rc >= 0 && l < geom.layers; l++) {
                uint8_t st = KVC_ITEM_OK;

                t->ref.layer = l;
                rc = kvc_put(t->c, t->ns, t->pool, &t->ref, 1, &st);
                if (rc >= 0 && st != KVC_ITEM_OK && st != KVC_ITEM_EXISTS)
                        rc = -ENOSPC;
        }
        t->ref.layer = 0;
        if (rc >= 0)
                return 0;
        fprintf(stderr, "kvdrive-bench rtt: set-up: %s (%s)\n", kvc_strerror(rc), kvc_last_error(t->c));
        return rc;
}

int bench_rtt(int argc, char **argv)
{
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, 's' }, { "load", required_argument, NULL, 'l' },
                { "samples", required_argument, NULL, 'n' }, { "repeat", required_argument, NULL, 'r' },
                { "poll-us", required_argument, NULL, 'p' }, { "help", no_argument, NULL, 'h' },
                {},
        };
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        struct opts o = { .samples = 20000, .repeat = 5, .load = (uint32_t)(cpus > 0 ? 2 * cpus : 4), .poll_us = -1 };
        struct target t = { .echo_fd = -1 };
        uint64_t x;
        int c, rc;

        while ((c = getopt_long(argc, argv, "s:l:n:r:p:h", longopts, NULL)) != -1) {
                switch (c) {
                case 's':
                        o.socket = optarg;
                        break;
                case 'l':
                        if (bench_parse_uint(optarg, 0, MAX_LOAD, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench rtt: --load 0-%d\n", MAX_LOAD);
                                return BENCH_EXIT_USAGE;
                        }
                        o.load = (uint32_t)x;
                        break;
                case 'n':
                        if (bench_parse_uint(optarg, 100, 10000000, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench rtt: --samples 100-10000000\n");
                                return BENCH_EXIT_USAGE;
                        }
                        o.samples = (uint32_t)x;
                        break;
                case 'r':
                        if (bench_parse_uint(optarg, 1, MAX_REPEAT, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench rtt: --repeat 1-%d\n", MAX_REPEAT);
                                return BENCH_EXIT_USAGE;
                        }
                        o.repeat = (uint32_t)x;
                        break;
                case 'p':
                        if (bench_parse_uint(optarg, 0, KVC_POLL_US_MAX, &x) < 0) {
                                fprintf(stderr, "kvdrive-bench rtt: --poll-us 0-%u\n", KVC_POLL_US_MAX);
                                return BENCH_EXIT_USAGE;
                        }
                        o.poll_us = (int64_t)x;
                        break;
                case 'h':
                        usage(stdout);
                        return EXIT_SUCCESS;
                default:
                        usage(stderr);
                        return BENCH_EXIT_USAGE;
                }
        }
        if (!o.socket) {
                usage(stderr);
                return BENCH_EXIT_USAGE;
        }
        rc = setup(&o, &t);
        if (rc == 0) {
                printf("# round trips, interleaved; %u per kind per run, %u runs; microseconds, median over runs "
                       "[min-max]; ratio: p50 over echo's p50 in the same run\n",
                       o.samples, o.repeat);
                printf("%4s  %-7s %24s %27s   %s\n", "load", "kind", "p50", "p99", "p50/echo");
                rc = measure(&o, &t, 0);
                if (rc == 0 && o.load > 0)
                        rc = measure(&o, &t, o.load);
                if (rc < 0)
                        fprintf(stderr, "kvdrive-bench rtt: %s\n", kvc_strerror(rc));
        }
        kvc_pool_free(t.pool);
        kvc_disconnect(t.c);
        if (t.echo_fd >= 0)
                close(t.echo_fd);
        if (t.echo_pid > 0)
                stop_all(&t.echo_pid, 1);
        return rc < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
