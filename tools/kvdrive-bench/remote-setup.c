/* SPDX-License-Identifier: MIT */
/*
 * kvdrive-bench remote's harness: running programs (with their CPU time),
 * redis-cli, the cluster (ours or the given one) and its masters, the two
 * daemons, sizing the run to the memory there is, and the temporary
 * directory with the watchdog that cleans up if we die.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <kvdrive/client.h>

#include "bench.h"
#include "remote.h"
#include "watchdog.h"

/* ---- running programs ---------------------------------------------------- */

/*
 * Runs argv (argv[0] found on PATH) with stdin on /dev/null, its stdout into
 * out (size bytes, NUL-terminated; NULL: discarded) and its stderr ours;
 * killed past timeout_s or when we die. Returns its exit status, 128 + the
 * signal that ended it, or -errno (-ETIMEDOUT). ret_cpu_s (may be NULL):
 * the CPU time it used.
 */
int run_cmd_cpu(const char *const *argv, char *out, size_t size, int timeout_s, double *ret_cpu_s)
{
        struct rusage ru = { 0 };
        uint64_t deadline = bench_now_ns() + (uint64_t)timeout_s * 1000000000ull;
        pid_t pid, parent = getpid();
        int p[2], st = 0, rc = 0;
        size_t len = 0;

        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                rc = -errno;
                close(p[0]);
                close(p[1]);
                return rc;
        }
        if (pid == 0) {
                int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(127);
                if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 || dup2(p[1], STDOUT_FILENO) < 0)
                        _exit(127);
                /* Nothing of ours in what it starts (the nodes live on). */
                close_range(3, ~0u, 0);
                execvp(argv[0], (char *const *)argv);
                fprintf(stderr, "kvdrive-bench: exec %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        close(p[1]);
        for (;;) {
                struct pollfd pfd = { .fd = p[0], .events = POLLIN };
                uint64_t now = bench_now_ns();
                char scratch[4096], *at = scratch;
                size_t room = sizeof(scratch);
                ssize_t n;

                if (now >= deadline) {
                        rc = -ETIMEDOUT;
                        break;
                }
                if (poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1) <= 0)
                        continue;
                if (out && len + 1 < size) {
                        at = out + len;
                        room = size - 1 - len;
                }
                n = read(p[0], at, room);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                if (at != scratch)
                        len += (size_t)n;
        }
        close(p[0]);
        if (out && size)
                out[len] = '\0';
        if (rc < 0)
                kill(pid, SIGKILL);
        while (wait4(pid, &st, 0, &ru) < 0 && errno == EINTR)
                ;
        if (rc < 0)
                return rc;
        if (ret_cpu_s)
                *ret_cpu_s = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                             (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int run_cmd(const char *const *argv, char *out, size_t size, int timeout_s)
{
        return run_cmd_cpu(argv, out, size, timeout_s, NULL);
}

/* CPU seconds process pid has used (all its threads), or -1. */
double proc_cpu_s(pid_t pid)
{
        char path[64], buf[1024];
        unsigned long long ut, st;
        const char *p;
        ssize_t n;
        int fd;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -1;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return -1;
        buf[n] = '\0';
        /* After "(comm) ": state, then fields 4..13, then utime, stime. */
        p = strrchr(buf, ')');
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
                return -1;
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

double self_cpu_s(void)
{
        struct rusage ru;

        getrusage(RUSAGE_SELF, &ru);
        return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

const char *remote_env_or(const char *name, const char *dflt)
{
        const char *v = getenv(name);

        return v && *v ? v : dflt;
}

/* redis-cli against one node, args NULL-terminated (at most 8). 0 or -EIO. */
__attribute__((sentinel)) int redis_cli(const struct node *n, char *out, size_t size, ...)
{
        const char *argv[16] = { remote_env_or("REDIS_CLI", "redis-cli"), "-h", n->host, "-p", n->port };
        size_t k = 5;
        va_list ap;

        va_start(ap, size);
        for (const char *a; k + 1 < sizeof(argv) / sizeof(argv[0]) && (a = va_arg(ap, const char *));)
                argv[k++] = a;
        va_end(ap);
        return run_cmd(argv, out, size, 60) == 0 ? 0 : -EIO;
}

/* The number after "name:" in an INFO reply; 0 if it is not there. */
static double info_field(const char *info, const char *name)
{
        size_t len = strlen(name);

        for (const char *p = info; (p = strstr(p, name)); p += len)
                if ((p == info || p[-1] == '\n') && p[len] == ':')
                        return strtod(p + len + 1, NULL);
        return 0;
}

/* ---- the watchdog ----------------------------------------------------------- */

/*
 * A process of its own session that stops the cluster (when it is ours) and
 * removes our directory once we are gone, however we went: it waits for EOF
 * on a pipe whose write end only we hold (O_CLOEXEC). The daemons get
 * SIGTERM when we die (PR_SET_PDEATHSIG). Returns the write end or -errno.
 */
static int watchdog_start(const char *script, const char *dir, bool own_cluster)
{
        const char *argv[] = { "/bin/sh", "-c",
                               own_cluster ? "\"$0\" stop \"$1/cluster\" >/dev/null 2>&1; rm -rf -- \"$1\""
                                           : "rm -rf -- \"$1\"",
                               script, dir, NULL };

        return kvd_watchdog_start(argv);
}

/* ---- the cluster ------------------------------------------------------------ */

static int parse_hostport(const char *s, size_t len, struct node *ret)
{
        const char *colon = memrchr(s, ':', len);
        size_t hl = colon ? (size_t)(colon - s) : 0, pl = colon ? len - hl - 1 : 0;

        if (!colon || hl == 0 || hl >= sizeof(ret->host) || pl == 0 || pl >= sizeof(ret->port) ||
            strspn(colon + 1, "0123456789") < pl)
                return -EINVAL;
        memcpy(ret->host, s, hl);
        ret->host[hl] = '\0';
        memcpy(ret->port, colon + 1, pl);
        ret->port[pl] = '\0';
        return 0;
}

/* The masters that serve slots, from CLUSTER NODES on the first seed. */
static int find_masters(struct bench *b)
{
        char *out = malloc(1 << 16), *save = NULL;
        struct node seed;
        int r;

        if (!out)
                return -ENOMEM;
        r = parse_hostport(b->seeds, strcspn(b->seeds, ","), &seed);
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench: bad seed in '%s'\n", b->seeds);
                goto out;
        }
        r = redis_cli(&seed, out, 1 << 16, "cluster", "nodes", NULL);
        if (r < 0) {
                fprintf(stderr, "kvdrive-bench: CLUSTER NODES on %s:%s failed\n", seed.host, seed.port);
                goto out;
        }
        b->n_masters = 0;
        for (char *line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char id[64], addr[160], flags[160];
                unsigned fields = 0;

                for (char *p = line; *p;) {
                        p += strspn(p, " ");
                        if (*p)
                                fields++;
                        p += strcspn(p, " ");
                }
                /* id addr flags master ping pong epoch link slot... */
                if (fields < 9 || sscanf(line, "%63s %159s %159s", id, addr, flags) != 3 || !strstr(flags, "master") ||
                    strstr(flags, "fail") || strstr(flags, "noaddr"))
                        continue;
                if (b->n_masters == MAX_MASTERS) {
                        fprintf(stderr, "kvdrive-bench: more than %d masters\n", MAX_MASTERS);
                        r = -E2BIG;
                        goto out;
                }
                if (parse_hostport(addr, strcspn(addr, "@,"), &b->masters[b->n_masters]) == 0)
                        b->n_masters++;
        }
        r = b->n_masters ? 0 : -ENOENT;
        if (r < 0)
                fprintf(stderr, "kvdrive-bench: no master serving slots in CLUSTER NODES of %s:%s\n", seed.host,
                        seed.port);
out:
        free(out);
        return r;
}

/* INFO section of every master, the named fields summed into ret[]. */
int masters_info(const struct bench *b, const char *section, const char *const *names, size_t n,
                        double *ret)
{
        char out[16384];

        memset(ret, 0, sizeof(*ret) * n);
        for (unsigned m = 0; m < b->n_masters; m++) {
                /* section NULL: INFO's default sections */
                if (redis_cli(&b->masters[m], out, sizeof(out), "info", section, NULL) < 0) {
                        fprintf(stderr, "kvdrive-bench: INFO on %s:%s failed\n", b->masters[m].host,
                                b->masters[m].port);
                        return -EIO;
                }
                for (size_t i = 0; i < n; i++)
                        ret[i] += info_field(out, names[i]);
        }
        return 0;
}

/* Keys named key:* on master m (redis-benchmark's), or -EIO. */
int64_t count_rb_keys(const struct bench *b, unsigned m)
{
        char *out = malloc(8 << 20);
        int64_t n = 0;

        if (!out)
                return -ENOMEM;
        if (redis_cli(&b->masters[m], out, 8 << 20, "--scan", "--pattern", "key:*", NULL) < 0) {
                free(out);
                return -EIO;
        }
        for (const char *p = out; *p; p++)
                n += *p == '\n';
        free(out);
        return n;
}

/* ---- the daemons ------------------------------------------------------------- */

int remote_snap(kvc_client *c, struct remote_snap *ret)
{
        struct kvc_stats *s = NULL;
        int r = kvc_stats_get(c, &s);

        if (r < 0)
                return r;
        memset(ret, 0, sizeof(*ret));
        ret->hits = s->remote.hits;
        ret->misses = s->remote.misses;
        ret->writes = s->remote.writes;
        ret->write_skips = s->remote.write_skips;
        ret->crc_failures = s->remote.crc_failures;
        ret->errors = s->remote.errors;
        ret->n_nodes = s->remote.n_nodes;
        snprintf(ret->condition, sizeof(ret->condition), "%s", s->remote.have ? s->remote.condition : "no remote tier");
        for (uint32_t i = 0; i < s->remote.n_nodes; i++) {
                const struct kvc_remote_node_stats *n = &s->remote.nodes[i];

                ret->nodes_up += n->up != 0;
                ret->node_hits += n->hits;
                ret->node_read_bytes += n->read_bytes;
                ret->node_lat_sum += n->latency_us_sum;
                for (int k = 0; k < KVC_LOOP_BUCKETS; k++)
                        ret->node_hist[k] += n->latency_hist[k];
        }
        kvc_stats_free(s);
        return 0;
}

void remote_sleep_ms(unsigned ms)
{
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Starts kvdrived as machine d in DIR/name with host_bytes of host tier and
 * the cluster as its remote tier; connects once it answers and its remote
 * tier has the slot map with every node up. */
static int daemon_start(struct bench *b, struct daemon *d, const char *sub, uint64_t host_bytes)
{
        char dir[264], hb[32], remote[1100];
        pid_t parent = getpid();
        struct remote_snap s = { 0 };
        int r = -ETIMEDOUT;

        snprintf(dir, sizeof(dir), "%s/%s", b->dir, sub);
        snprintf(d->sock, sizeof(d->sock), "%s/sock", dir);
        snprintf(hb, sizeof(hb), "%" PRIu64 "M", host_bytes >> 20);
        snprintf(remote, sizeof(remote), "redis-cluster://%s", b->seeds);
        if (mkdir(dir, 0700) < 0)
                return -errno;
        fflush(NULL);
        d->pid = fork();
        if (d->pid < 0)
                return -errno;
        if (d->pid == 0) {
                /* The host pool is not pinned: mlock of it fails under a
                 * small RLIMIT_MEMLOCK anyway, and "try" would say so. */
                const char *argv[] = { b->kvdrived, "--foreground", "--socket", d->sock, "--host-bytes", hb,
                                       "--host-lock", "off", "--remote", remote, "--remote-ttl-s", "3600",
                                       "--remote-max-inflight-bytes", "256M", "--log-level", "warning",
                                       "--metrics-listen", "off", NULL };
                int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

                if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                        _exit(127);
                /* Its log on our stderr; our stdout may be JSON. */
                if (devnull < 0 || dup2(devnull, STDIN_FILENO) < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0)
                        _exit(127);
                close_range(3, ~0u, 0);
                execv(argv[0], (char *const *)argv);
                fprintf(stderr, "kvdrive-bench: exec %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        for (int i = 0; i < 30000 && !d->c; i++) {
                int st;

                if (kvc_connect(d->sock, "kvdrive-bench remote", &d->c) == 0)
                        break;
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        fprintf(stderr, "kvdrive-bench: kvdrived (machine %s) exited at start\n", d->name);
                        return -ECHILD;
                }
                remote_sleep_ms(1);
        }
        if (!d->c) {
                fprintf(stderr, "kvdrive-bench: kvdrived (machine %s) did not answer on %s\n", d->name, d->sock);
                return -ETIMEDOUT;
        }
        for (int i = 0; i < 3000; i++) {
                r = remote_snap(d->c, &s);
                if (r < 0)
                        break;
                if (s.n_nodes > 0 && s.nodes_up == s.n_nodes && strcmp(s.condition, "ok") == 0)
                        return 0;
                r = -ETIMEDOUT;
                remote_sleep_ms(10);
        }
        fprintf(stderr, "kvdrive-bench: machine %s's remote tier is not ok: %s\n", d->name,
                r == -ETIMEDOUT ? s.condition : kvc_strerror(r));
        return r;
}

/* SIGTERM, then SIGKILL after 10 s. 0 if it exited with status 0. */
static int daemon_stop(struct daemon *d)
{
        int st = 0, rc = -EIO;

        d->c = kvc_disconnect(d->c);
        if (d->pid <= 0)
                return 0;
        kill(d->pid, SIGTERM);
        for (int i = 0; i < 10000; i++) {
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        rc = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
                        if (rc < 0)
                                fprintf(stderr, "kvdrive-bench: kvdrived (machine %s) ended with wait status 0x%x\n",
                                        d->name, (unsigned)st);
                        d->pid = 0;
                        return rc;
                }
                remote_sleep_ms(1);
        }
        fprintf(stderr, "kvdrive-bench: kvdrived (machine %s) ignored SIGTERM for 10 s: SIGKILL\n", d->name);
        kill(d->pid, SIGKILL);
        while (waitpid(d->pid, &st, 0) < 0 && errno == EINTR)
                ;
        d->pid = 0;
        return rc;
}

/* ---- sizing ------------------------------------------------------------------------ */

static uint64_t mem_available(void)
{
        char line[256];
        uint64_t kb = 0;
        FILE *f = fopen("/proc/meminfo", "re");

        if (!f)
                return 0;
        while (fgets(line, sizeof(line), f))
                if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1)
                        break;
        fclose(f);
        return kb << 10;
}

/*
 * Blocks per size: as asked (or DEFAULT_BYTES' worth), shrunk to what fits.
 * The cluster holds a size's blocks and redis-benchmark's values of the same
 * count at once, allocator rounding included (jemalloc's size classes add up
 * to 25% to a value just over a power of two): 2 x 1.5 bytes per value byte.
 * This machine holds both daemons' host tiers (2 x 1.15), and the cluster
 * too when it is ours. room: the least bytes a master of a cluster not ours
 * can still take (0: no limit known).
 */
static int plan(struct bench *b, unsigned masters, uint64_t room)
{
        uint64_t avail = mem_available();

        for (size_t i = 0; i < b->o.n_sizes; i++) {
                uint64_t size = b->o.sizes[i], value = size + 512, n = b->o.blocks ? b->o.blocks : DEFAULT_BYTES / size;
                uint64_t here = size * 23 / 10 + (b->o.seeds ? 0 : value * 3), cap = UINT32_MAX;
                const char *why = NULL;
                char sz[32];

                if (avail && avail * 7 / 10 / here < cap) {
                        cap = avail * 7 / 10 / here;
                        why = "this machine's available memory";
                }
                if (room && room * masters / (value * 3) < cap) {
                        cap = room * masters / (value * 3);
                        why = "the cluster's maxmemory";
                }
                if (n > cap) {
                        fprintf(stderr, "kvdrive-bench: %s: %" PRIu64 " blocks do not fit %s; running %" PRIu64 "\n",
                                bench_format_size(sz, sizeof(sz), size), n, why, cap);
                        n = cap;
                }
                if (n < 2u * SAMPLES) {
                        fprintf(stderr, "kvdrive-bench: %s: %" PRIu64 " blocks are too few\n",
                                bench_format_size(sz, sizeof(sz), size), n);
                        return -EINVAL;
                }
                b->blocks[i] = n;
        }
        return 0;
}

/* The largest of the sizes' byte counts. */
static uint64_t max_bytes(const struct bench *b, uint64_t extra_per_block)
{
        uint64_t m = 0;

        for (size_t i = 0; i < b->o.n_sizes; i++) {
                uint64_t v = b->blocks[i] * (b->o.sizes[i] + extra_per_block);

                m = v > m ? v : m;
        }
        return m;
}

/* Starts a 3-master cluster of our own, each master's maxmemory room for
 * the largest size's data (each size's goes before the next). */
static int cluster_start(struct bench *b)
{
        char mm[32], out[1024];
        const char *argv[] = { b->script, "start", b->cluster_dir, "--masters", "3", "--maxmemory", mm, NULL };
        int r;

        /* Both data sets, 1.5x each (plan()), over 3 masters: once the
         * values' bytes per master, and some. */
        snprintf(mm, sizeof(mm), "%" PRIu64 "mb", (max_bytes(b, 512) >> 20) + 64);
        fprintf(stderr, "kvdrive-bench remote: starting a 3-master Redis Cluster (maxmemory %s each) in %s\n", mm,
                b->cluster_dir);
        b->cluster_up = true;   /* even half started: stop stops what runs */
        r = run_cmd(argv, out, sizeof(out), 180);
        if (r != 0) {
                fprintf(stderr, "kvdrive-bench: %s start failed%s\n", b->script, r < 0 ? "" : " (its stderr is above)");
                return -EIO;
        }
        out[strcspn(out, "\n")] = '\0';
        snprintf(b->seeds, sizeof(b->seeds), "%s", out);
        return b->seeds[0] ? 0 : -EPROTO;
}

/* With --seeds: the least room (maxmemory - used_memory) of the masters. */
static uint64_t cluster_room(const struct bench *b)
{
        uint64_t room = UINT64_MAX;
        char out[16384];

        for (unsigned m = 0; m < b->n_masters; m++) {
                uint64_t max = 0, used;

                if (redis_cli(&b->masters[m], out, sizeof(out), "config", "get", "maxmemory", NULL) < 0)
                        return 0;
                if (strchr(out, '\n'))
                        max = strtoull(strchr(out, '\n') + 1, NULL, 10);
                if (redis_cli(&b->masters[m], out, sizeof(out), "info", "memory", NULL) < 0)
                        return 0;
                used = (uint64_t)info_field(out, "used_memory");
                if (max == 0)
                        continue;       /* no limit */
                if (max - (max > used ? used : max) < room)
                        room = max - (max > used ? used : max);
        }
        return room == UINT64_MAX ? 0 : room;
}

static bool find_exe(const char *name, char *buf, size_t size)
{
        const char *path = remote_env_or("PATH", "/usr/local/bin:/usr/bin:/bin");

        if (strchr(name, '/')) {
                snprintf(buf, size, "%s", name);
                return access(buf, X_OK) == 0;
        }
        for (const char *p = path; *p;) {
                size_t len = strcspn(p, ":");
                int k = snprintf(buf, size, "%.*s/%s", (int)len, p, name);

                if (k > 0 && (size_t)k < size && access(buf, X_OK) == 0)
                        return true;
                p += len;
                p += *p == ':';
        }
        return false;
}

/* kvdrived: --kvdrived, $KVDRIVED, the build tree's (next to this build of
 * the benchmark), PATH's. tools/redis-cluster: --redis-cluster,
 * $KVDRIVE_REDIS_CLUSTER, the source tree's. */
int remote_find_programs(struct bench *b)
{
        const char *k = b->o.kvdrived ? b->o.kvdrived : remote_env_or("KVDRIVED", NULL);
        const char *s = b->o.script ? b->o.script : remote_env_or("KVDRIVE_REDIS_CLUSTER", KVB_REDIS_CLUSTER);
        char path[4096];

        if (k ? !find_exe(k, b->kvdrived, sizeof(b->kvdrived))
              : !(KVB_KVDRIVED[0] && find_exe(KVB_KVDRIVED, b->kvdrived, sizeof(b->kvdrived))) &&
                        !find_exe("kvdrived", b->kvdrived, sizeof(b->kvdrived))) {
                fprintf(stderr, "kvdrive-bench: no kvdrived (%s): give --kvdrived\n", k ? k : "build tree, PATH");
                return -ENOENT;
        }
        if (!b->o.seeds && (!*s || !find_exe(s, b->script, sizeof(b->script)))) {
                fprintf(stderr, "kvdrive-bench: no tools/redis-cluster (%s): give --redis-cluster or --seeds\n",
                        *s ? s : "not built in");
                return -ENOENT;
        }
        if (!find_exe(remote_env_or("REDIS_BENCHMARK", "redis-benchmark"), path, sizeof(path)) ||
            !find_exe(remote_env_or("REDIS_CLI", "redis-cli"), path, sizeof(path))) {
                fprintf(stderr, "kvdrive-bench: redis-benchmark and redis-cli are needed (apt-get install "
                        "redis-tools)\n");
                return -ENOENT;
        }
        return 0;
}

int remote_setup(struct bench *b)
{
        const char *tmp = remote_env_or("TMPDIR", "/tmp");
        uint64_t host_bytes;
        int r;

        if (strlen(tmp) > sizeof(b->dir) - 40)
                tmp = "/tmp";
        snprintf(b->dir, sizeof(b->dir), "%s/kvdrive-bench-remote-XXXXXX", tmp);
        if (!mkdtemp(b->dir)) {
                r = -errno;
                fprintf(stderr, "kvdrive-bench: mkdtemp %s: %s\n", b->dir, strerror(errno));
                b->dir[0] = '\0';
                return r;
        }
        b->watchdog = watchdog_start(b->o.seeds ? "true" : b->script, b->dir, !b->o.seeds);
        if (b->watchdog < 0)
                return b->watchdog;
        if (b->o.seeds) {
                snprintf(b->seeds, sizeof(b->seeds), "%s", b->o.seeds);
                r = find_masters(b);
                if (r == 0)
                        r = plan(b, b->n_masters, cluster_room(b));
        } else {
                snprintf(b->cluster_dir, sizeof(b->cluster_dir), "%s/cluster", b->dir);
                r = plan(b, 3, 0);
                if (r == 0)
                        r = cluster_start(b);
                if (r == 0)
                        r = find_masters(b);
        }
        if (r < 0)
                return r;
        /* Room for the largest size's blocks, and the slabs' slack. */
        host_bytes = max_bytes(b, 0) + max_bytes(b, 0) / 8 + (64ull << 20);
        r = daemon_start(b, &b->a, "a", host_bytes);
        if (r == 0)
                r = daemon_start(b, &b->b, "b", host_bytes);
        return r;
}

int remote_teardown(struct bench *b)
{
        int r = 0;

        if (daemon_stop(&b->b) < 0)
                r = -EIO;
        if (daemon_stop(&b->a) < 0)
                r = -EIO;
        if (b->cluster_up) {
                const char *argv[] = { b->script, "stop", b->cluster_dir, NULL };

                b->cluster_up = false;
                if (run_cmd(argv, NULL, 0, 120) != 0) {
                        fprintf(stderr, "kvdrive-bench: %s stop %s failed\n", b->script, b->cluster_dir);
                        r = -EIO;
                }
        }
        /* The watchdog removes the directory (and stops the cluster again:
         * a no-op) once this is closed. */
        if (b->watchdog >= 0)
                close(b->watchdog);
        b->watchdog = -1;
        return r;
}
