/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "size.h"

int bench_parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
        unsigned long long v;
        char *end;

        if (!s || *s < '0' || *s > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == ERANGE)
                return -ERANGE;
        if (*end != '\0')
                return -EINVAL;
        if (v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int bench_parse_sizes(const char *s, uint64_t **ret, size_t *ret_n)
{
        char *copy, *tok, *save = NULL;
        uint64_t *v = NULL;
        size_t n = 0;
        int err = 0;

        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                uint64_t *nv = reallocarray(v, n + 1, sizeof(*v));

                if (!nv) {
                        err = -ENOMEM;
                        goto out_free_copy;
                }
                v = nv;
                err = kvd_parse_size(tok, &v[n]);
                if (err < 0)
                        goto out_free_copy;
                n++;
        }
        if (n == 0)
                err = -EINVAL;
out_free_copy:
        free(copy);
        if (err < 0) {
                free(v);
                return err;
        }
        *ret = v;
        *ret_n = n;
        return 0;
}

const char *bench_format_size(char *buf, size_t size, uint64_t v)
{
        static const char units[] = "KMG";
        unsigned u = 0;

        while (u < 3 && v >= 1024 && v % 1024 == 0) {
                v /= 1024;
                u++;
        }
        if (u == 0)
                snprintf(buf, size, "%" PRIu64, v);
        else
                snprintf(buf, size, "%" PRIu64 "%c", v, units[u - 1]);
        return buf;
}

uint64_t bench_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return (x > y) - (x < y);
}

double bench_median(double *v, size_t n)
{
        if (n == 0)
                return 0.0;
        qsort(v, n, sizeof(*v), cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* The gnuplot terminal: pngcairo where gnuplot has it. */
static const char *plot_terminal(void)
{
        static const char *t;

        if (!t)
                t = system("gnuplot -e 'set terminal pngcairo' >/dev/null 2>&1") == 0 ? "pngcairo size 900,560 font ',11'"
                                                                                     : "png size 900,560";
        return t;
}

FILE *bench_plot_open(const char *out, const char *png)
{
        FILE *f = popen("gnuplot", "w");

        if (f)
                fprintf(f, "set terminal %s\nset output '%s/%s'\n", plot_terminal(), out, png);
        return f;
}

int bench_plot_close(FILE *f)
{
        return pclose(f) == 0 ? 0 : -1;
}

kvc_client *bench_wait_daemon(pid_t pid, const char *sock, const char *name, unsigned timeout_s)
{
        for (uint64_t i = 0; i < (uint64_t)timeout_s * 1000u; i++) {
                kvc_client *c = NULL;
                int status;

                if (kvc_connect(sock, name, &c) == 0)
                        return c;
                if (waitpid(pid, &status, WNOHANG) == pid)
                        return NULL;
                usleep(1000);
        }
        return NULL;
}
