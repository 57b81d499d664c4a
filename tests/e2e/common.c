/* SPDX-License-Identifier: MIT */
#include "common.h"

#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

const struct kvc_geometry e2e_geom = {
        .layers = E2E_LAYERS,
        .kv_heads = 2,
        .head_dim = 64,
        .dtype = KVC_DTYPE_F16,
        .block_tokens = E2E_BLOCK_TOKENS,
};

uint64_t e2e_splitmix(uint64_t *state)
{
        uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

void e2e_fill_seed(void *buf, size_t n, uint64_t seed)
{
        uint8_t *p = buf;
        uint64_t s = seed;

        while (n >= 8) {
                uint64_t v = e2e_splitmix(&s);

                memcpy(p, &v, 8);
                p += 8;
                n -= 8;
        }
        if (n) {
                uint64_t v = e2e_splitmix(&s);

                memcpy(p, &v, n);
        }
}

void e2e_fill_block(void *buf, size_t n, const struct kvc_key *k, uint32_t layer, uint64_t salt)
{
        uint64_t s = k->hi ^ (k->lo * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)layer << 56) ^
                     (salt * 0xd6e8feb86659fd93ull);

        e2e_fill_seed(buf, n, e2e_splitmix(&s));
}

int e2e_random(void *buf, size_t n)
{
        uint8_t *p = buf;

        while (n) {
                ssize_t r = getrandom(p, n, 0);

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += r;
                n -= (size_t)r;
        }
        return 0;
}

void e2e_tokens(uint32_t *tok, size_t n, uint64_t seed)
{
        uint64_t s = seed;

        for (size_t i = 0; i < n; i++)
                tok[i] = (uint32_t)(e2e_splitmix(&s) % 128000u);
}

int e2e_write_file(const char *path, const void *buf, size_t n)
{
        const uint8_t *p = buf;
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        int rc = 0;

        if (fd < 0)
                return -errno;
        while (n) {
                ssize_t w = write(fd, p, n);

                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        rc = -errno;
                        break;
                }
                p += w;
                n -= (size_t)w;
        }
        if (close(fd) < 0 && rc == 0)
                rc = -errno;
        return rc;
}

int e2e_read_file(const char *path, void *buf, size_t n)
{
        uint8_t *p = buf;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        int rc = 0;

        if (fd < 0)
                return -errno;
        while (n) {
                ssize_t r = read(fd, p, n);

                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0) {
                        rc = r < 0 ? -errno : -ENODATA;
                        break;
                }
                p += r;
                n -= (size_t)r;
        }
        close(fd);
        return rc;
}

pid_t e2e_fork(int (*fn)(void *), void *arg)
{
        pid_t pid;

        fflush(NULL);
        pid = fork();
        if (pid == 0) {
                /* Never outlive the test, whatever Check's fork mode. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                _exit(fn(arg));
        }
        return pid;
}

pid_t e2e_fork_as(uid_t uid, gid_t gid, const gid_t *groups, size_t n, int (*fn)(void *), void *arg)
{
        pid_t pid;

        fflush(NULL);
        pid = fork();
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (setgroups(n, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
                        fprintf(stderr, "[child %d] cannot become uid %u gid %u: %m\n", (int)getpid(),
                                (unsigned)uid, (unsigned)gid);
                        _exit(1);
                }
                /* setuid() made us non-dumpable; the sanitizers' leak check
                 * needs to ptrace its own process. */
                prctl(PR_SET_DUMPABLE, 1);
                prctl(PR_SET_PDEATHSIG, SIGKILL); /* cleared by setuid() */
                _exit(fn(arg));
        }
        return pid;
}

int e2e_wait_child(pid_t pid, int timeout_ms, char *why, size_t size)
{
        struct timespec ts = { .tv_nsec = 5 * 1000000L };
        int st;

        if (pid < 0) {
                snprintf(why, size, "fork failed");
                return -ECHILD;
        }
        for (int waited = 0;; waited += 5) {
                pid_t r = waitpid(pid, &st, WNOHANG);

                if (r == pid)
                        break;
                if (r < 0 && errno != EINTR) {
                        snprintf(why, size, "waitpid: %s", strerror(errno));
                        return -errno;
                }
                if (waited >= timeout_ms) {
                        kill(pid, SIGKILL);
                        waitpid(pid, &st, 0);
                        snprintf(why, size, "did not finish within %d ms (killed)", timeout_ms);
                        return -ETIMEDOUT;
                }
                nanosleep(&ts, NULL);
        }
        kvd_test_status_str(st, why, size);
        return st;
}

const struct kvc_tier_stats *e2e_tier(const struct kvc_stats *s, const char *name)
{
        for (uint32_t i = 0; i < s->n_tiers; i++)
                if (!strcmp(s->tiers[i].name, name))
                        return &s->tiers[i];
        return NULL;
}

const struct kvc_ns_stats *e2e_ns(const struct kvc_stats *s, const char *name)
{
        for (uint32_t i = 0; i < s->n_namespaces; i++)
                if (!strcmp(s->namespaces[i].name, name))
                        return &s->namespaces[i];
        return NULL;
}

int e2e_wait_clients(kvc_client *c, uint32_t want, int timeout_ms, uint32_t *ret_last)
{
        struct timespec ts = { .tv_nsec = 20 * 1000000L };

        for (int waited = 0;; waited += 20) {
                struct kvc_stats *s = NULL;
                uint32_t n;
                int rc = kvc_stats_get(c, &s);

                if (rc < 0)
                        return rc;
                n = s->clients;
                kvc_stats_free(s);
                *ret_last = n;
                if (n == want)
                        return 0;
                if (waited >= timeout_ms)
                        return -ETIMEDOUT;
                nanosleep(&ts, NULL);
        }
}

int e2e_open(const char *sock, const char *client, const char *ns_name, kvc_client **ret_c,
             uint32_t *ret_ns)
{
        kvc_client *c = NULL;
        uint64_t bb = 0;
        int rc = kvc_connect(sock, client, &c);

        if (rc < 0) {
                fprintf(stderr, "%s: kvc_connect(%s): %s\n", client, sock, kvc_strerror(rc));
                return rc;
        }
        rc = kvc_register_namespace(c, ns_name, &e2e_geom, ret_ns, &bb);
        if (rc < 0) {
                fprintf(stderr, "%s: register %s: %s (%s)\n", client, ns_name, kvc_strerror(rc),
                        kvc_last_error(c));
                kvc_disconnect(c);
                return rc;
        }
        if (bb != E2E_BLOCK_BYTES) {
                fprintf(stderr, "%s: block_bytes %llu, want %u\n", client,
                        (unsigned long long)bb, E2E_BLOCK_BYTES);
                kvc_disconnect(c);
                return -EPROTO;
        }
        *ret_c = c;
        return 0;
}

long e2e_memdiff(const void *a, const void *b, size_t n)
{
        const uint8_t *x = a, *y = b;

        for (size_t i = 0; i < n; i++)
                if (x[i] != y[i])
                        return (long)i;
        return -1;
}

bool e2e_all_bytes(const void *buf, size_t n, uint8_t byte)
{
        const uint8_t *p = buf;

        for (size_t i = 0; i < n; i++)
                if (p[i] != byte)
                        return false;
        return true;
}

int64_t e2e_now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int e2e_wait_stats(kvc_client *c, e2e_stats_pred pred, void *arg, int timeout_ms, struct kvc_stats **ret_last)
{
        struct timespec nap = { .tv_nsec = 10 * 1000000L };
        int64_t deadline = e2e_now_ms() + timeout_ms;
        struct kvc_stats *s = NULL;
        int rc;

        for (;;) {
                bool done;

                rc = kvc_stats_get(c, &s);
                if (rc < 0)
                        break;
                done = pred(s, arg);
                if (done || e2e_now_ms() >= deadline) {
                        rc = done ? 0 : -ETIMEDOUT;
                        break;
                }
                kvc_stats_free(s);
                s = NULL;
                nanosleep(&nap, NULL);
        }
        if (ret_last)
                *ret_last = s;
        else
                kvc_stats_free(s);
        return rc;
}

int e2e_run_bench(const char *tmp, const char *const *args, int timeout_ms, char **ret_out, char **ret_err)
{
        const char *bench = getenv("KVDRIVE_BENCH"), *argv[40];
        char out_path[256], err_path[256], why[96];
        size_t n = 0;
        struct stat st;
        pid_t pid;
        int status;

        ck_assert_msg(bench && *bench, "$KVDRIVE_BENCH is not set (run the tests with meson test)");
        argv[n++] = bench;
        for (size_t i = 0; args[i]; i++) {
                ck_assert_msg(n + 1 < sizeof(argv) / sizeof(argv[0]), "too many kvdrive-bench arguments");
                argv[n++] = args[i];
        }
        argv[n] = NULL;
        snprintf(out_path, sizeof(out_path), "%s/stdout", tmp);
        snprintf(err_path, sizeof(err_path), "%s/stderr", tmp);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int o = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

                if (o < 0 || e < 0 || dup2(o, STDOUT_FILENO) < 0 || dup2(e, STDERR_FILENO) < 0 ||
                    setenv("TMPDIR", tmp, 1) < 0)
                        _exit(127);
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        status = e2e_wait_child(pid, timeout_ms, why, sizeof(why));
        ck_assert_msg(status != -ETIMEDOUT, "kvdrive-bench %s: %s", args[0], why);
        for (int i = 0; i < 2; i++) {
                const char *p = i ? err_path : out_path;
                char **ret = i ? ret_err : ret_out;
                char *buf;

                ck_assert_int_eq(stat(p, &st), 0);
                buf = calloc(1, (size_t)st.st_size + 1);
                ck_assert_ptr_nonnull(buf);
                ck_assert_int_eq(e2e_read_file(p, buf, (size_t)st.st_size), 0);
                *ret = buf;
        }
        return status;
}
