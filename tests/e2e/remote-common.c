/* SPDX-License-Identifier: MIT */
#include "remote-common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "watchdog.h"

#define CLI_ARGS_MAX 32
#define REGISTRY_MAX 8

struct e2e_cluster e2e_fixture_cluster;

static const char *script_path(void)
{
        const char *p = getenv("KVDRIVE_REDIS_CLUSTER");

        return p && *p ? p : E2E_REDIS_CLUSTER;
}

/* name as exec would find it (PATH unless it holds a '/') into buf. */
static bool find_exe(const char *name, char *buf, size_t size)
{
        const char *path = getenv("PATH");

        if (strchr(name, '/')) {
                snprintf(buf, size, "%s", name);
                return access(buf, X_OK) == 0;
        }
        if (!path || !*path)
                path = "/usr/local/bin:/usr/bin:/bin";
        for (const char *p = path; *p;) {
                size_t len = strcspn(p, ":");
                int n = snprintf(buf, size, "%.*s/%s", (int)len, p, name);

                if (n > 0 && (size_t)n < size && access(buf, X_OK) == 0)
                        return true;
                p += len;
                if (*p == ':')
                        p++;
        }
        return false;
}

static const char *env_or(const char *name, const char *dflt)
{
        const char *v = getenv(name);

        return v && *v ? v : dflt;
}

bool e2e_have_redis(void)
{
        char buf[4096];

        return find_exe(env_or("REDIS_SERVER", "redis-server"), buf, sizeof(buf)) &&
               find_exe(env_or("REDIS_CLI", "redis-cli"), buf, sizeof(buf));
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
        return remove(path);
}

static void rm_rf(const char *dir)
{
        if (dir[0])
                nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- running a program ------------------------------------------------- */

/*
 * Runs argv (argv[0] a path) to its end, its stdin on /dev/null, its stdout
 * into the file out (NULL: /dev/null), its stderr into the file err (NULL:
 * the test's), nothing else of the test's open, in a process group of its
 * own, killed with the calling thread. Returns its wait status, -ETIMEDOUT
 * after timeout_ms (its whole group is killed), or -errno.
 */
static int run(const char *const *argv, int timeout_ms, const char *out, const char *err)
{
        pid_t pid, parent = getpid();
        char why[96];
        int st;

        fflush(NULL);
        pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
                int o = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                int e = err ? open(err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600) : STDERR_FILENO;

                setpgid(0, 0);
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent || in < 0 || o < 0 || e < 0 ||
                    dup2(in, STDIN_FILENO) < 0 || dup2(o, STDOUT_FILENO) < 0 || dup2(e, STDERR_FILENO) < 0)
                        _exit(127);
                /* Nothing of the test's outlives it in the daemons the
                 * script starts: not its sockets, not Check's files. */
                close_range(3, ~0u, 0);
                signal(SIGPIPE, SIG_DFL);
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        st = e2e_wait_child(pid, timeout_ms, why, sizeof(why));
        if (st == -ETIMEDOUT)
                kill(-pid, SIGKILL);
        return st;
}

/* Reads the first size bytes (or fewer) of the file path into buf (no NUL
 * added). The file's size, or -errno. */
static long read_head(const char *path, char *buf, size_t size)
{
        struct stat st;
        int rc;

        if (stat(path, &st) < 0)
                return -errno;
        rc = e2e_read_file(path, buf, (size_t)st.st_size < size ? (size_t)st.st_size : size);
        return rc < 0 ? rc : (long)st.st_size;
}

/* The same for text: at most size - 1 bytes, and a NUL. 0 or -errno. */
static int read_text(const char *path, char *buf, size_t size)
{
        long len = read_head(path, buf, size - 1);

        buf[len < 0 ? 0 : len < (long)size - 1 ? len : (long)size - 1] = '\0';
        return len < 0 ? (int)len : 0;
}

/* Runs tools/redis-cluster with args (NULL-terminated), its stderr the
 * test's. 0, -EIO if it failed, -errno. */
static int run_script(int timeout_ms, ...)
{
        const char *argv[12] = { script_path() };
        size_t n = 1;
        va_list ap;
        int st;

        va_start(ap, timeout_ms);
        for (const char *a; n + 1 < sizeof(argv) / sizeof(argv[0]) && (a = va_arg(ap, const char *));)
                argv[n++] = a;
        va_end(ap);
        st = run(argv, timeout_ms, NULL, NULL);
        if (st < 0) {
                fprintf(stderr, "e2e: %s %s: %s\n", argv[0], argv[1], strerror(-st));
                return st;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "e2e: %s %s %s: wait status 0x%x\n", argv[0], argv[1], argv[2], (unsigned)st);
                return -EIO;
        }
        return 0;
}

/* ---- cleanup at exit and after a crash ---------------------------------- */

/* What the atexit handler needs, copied: a test's struct e2e_cluster may be
 * on a stack that is gone by then. */
static struct {
        bool used;
        pid_t owner;            /* only the process that started it stops it */
        int watchdog;           /* see watchdog_start() */
        char dir[sizeof(((struct e2e_cluster *)0)->dir)];
} registry[REGISTRY_MAX];

static bool atexit_registered;

/*
 * A watchdog process per cluster stops it and removes its directory once
 * the process that started it dies, however it dies. It runs in its own
 * session, holding nothing of the test's, and waits for EOF on a pipe whose
 * write end only that process holds (O_CLOEXEC: not the programs it runs).
 * Returns the write end, or -errno.
 */
static int watchdog_start(const char *dir)
{
        /* Copied before the fork: the watchdog only reads and execs. */
        const char *argv[] = { "/bin/sh", "-c", "\"$0\" stop \"$1\"; rm -rf -- \"$1\"", script_path(),
                               dir, NULL };

        return kvd_watchdog_start(argv);
}

static void registry_stop(int i)
{
        run_script(E2E_CLUSTER_TIMEOUT_MS, "stop", registry[i].dir, NULL);
        rm_rf(registry[i].dir);
        if (registry[i].watchdog >= 0)
                close(registry[i].watchdog);
        registry[i].used = false;
}

static void cleanup_at_exit(void)
{
        for (int i = 0; i < REGISTRY_MAX; i++)
                if (registry[i].used && registry[i].owner == getpid())
                        registry_stop(i);
}

static int registry_add(const char *dir)
{
        if (!atexit_registered) {
                if (atexit(cleanup_at_exit) != 0)
                        return -ENOMEM;
                atexit_registered = true;
        }
        for (int i = 0; i < REGISTRY_MAX; i++) {
                if (registry[i].used)
                        continue;
                registry[i].used = true;
                registry[i].owner = getpid();
                registry[i].watchdog = watchdog_start(dir);
                snprintf(registry[i].dir, sizeof(registry[i].dir), "%s", dir);
                return 0;
        }
        return -ENOSPC;
}

static int registry_find(const char *dir)
{
        for (int i = 0; i < REGISTRY_MAX; i++)
                if (registry[i].used && registry[i].owner == getpid() && !strcmp(registry[i].dir, dir))
                        return i;
        return -1;
}

/* ---- the cluster --------------------------------------------------------- */

static int parse_seeds(struct e2e_cluster *cl)
{
        char copy[sizeof(cl->seeds)], *save = NULL;

        cl->seeds[strcspn(cl->seeds, "\n")] = '\0';
        snprintf(copy, sizeof(copy), "%s", cl->seeds);
        cl->n = 0;
        for (char *s = strtok_r(copy, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
                int port, end = 0;

                if (cl->n == E2E_CLUSTER_MAX || sscanf(s, "127.0.0.1:%d%n", &port, &end) != 1 ||
                    s[end] || port <= 0 || port > 65535)
                        return -EPROTO;
                cl->ports[cl->n++] = port;
        }
        return cl->n ? 0 : -EPROTO;
}

int e2e_cluster_start(struct e2e_cluster *cl, unsigned masters, char *why, size_t size)
{
        const char *tmp = getenv("TMPDIR");
        char nbuf[16], path[sizeof(cl->dir) + 8];
        int rc;

        memset(cl, 0, sizeof(*cl));
        if (size)
                why[0] = '\0';
        if (masters == 0)
                masters = 3;
        if (masters > E2E_CLUSTER_MAX) {
                snprintf(why, size, "%u masters: at most %u", masters, E2E_CLUSTER_MAX);
                return -EINVAL;
        }
        if (access(script_path(), X_OK) < 0) {
                rc = -errno;
                snprintf(why, size, "%s: %s", script_path(), strerror(errno));
                return rc;
        }
        if (!e2e_have_redis()) {
                snprintf(why, size, "redis-server or redis-cli is not installed");
                return -ENOENT;
        }
        if (!tmp || !*tmp || strlen(tmp) > sizeof(cl->dir) - 32)
                tmp = "/tmp";
        snprintf(cl->dir, sizeof(cl->dir), "%s/kvd-redis-XXXXXX", tmp);
        if (!mkdtemp(cl->dir)) {
                rc = -errno;
                snprintf(why, size, "mkdtemp %s: %s", cl->dir, strerror(errno));
                cl->dir[0] = '\0';
                return rc;
        }
        rc = registry_add(cl->dir);
        if (rc < 0) {
                snprintf(why, size, "more than %d clusters at once", REGISTRY_MAX);
                rm_rf(cl->dir);
                cl->dir[0] = '\0';
                return rc;
        }
        snprintf(nbuf, sizeof(nbuf), "%u", masters);
        rc = run_script(E2E_CLUSTER_TIMEOUT_MS, "start", cl->dir, "--masters", nbuf, NULL);
        if (rc < 0) {
                snprintf(why, size, "tools/redis-cluster start %s: %s (its stderr is above)", cl->dir,
                         strerror(-rc));
                goto err_stop;
        }
        snprintf(path, sizeof(path), "%s/seeds", cl->dir);
        read_text(path, cl->seeds, sizeof(cl->seeds));
        rc = parse_seeds(cl);
        if (rc < 0 || cl->n != masters) {
                snprintf(why, size, "tools/redis-cluster start printed '%s', not %u seeds", cl->seeds, masters);
                rc = -EPROTO;
                goto err_stop;
        }
        return 0;

err_stop:
        e2e_cluster_stop(cl);
        return rc;
}

void e2e_cluster_stop(struct e2e_cluster *cl)
{
        int i;

        if (!cl->dir[0])
                return;
        i = registry_find(cl->dir);
        if (i >= 0) {
                registry_stop(i);
        } else {
                /* Started by another process (a forked test stopping the
                 * runner's cluster): stop it all the same. */
                run_script(E2E_CLUSTER_TIMEOUT_MS, "stop", cl->dir, NULL);
                rm_rf(cl->dir);
        }
        memset(cl, 0, sizeof(*cl));
}

static int node_cmd(struct e2e_cluster *cl, const char *cmd, unsigned i)
{
        char ibuf[16];

        if (!cl->dir[0] || i < 1 || i > cl->n)
                return -EINVAL;
        snprintf(ibuf, sizeof(ibuf), "%u", i);
        return run_script(E2E_CLUSTER_TIMEOUT_MS, cmd, cl->dir, ibuf, NULL);
}

int e2e_cluster_kill(struct e2e_cluster *cl, unsigned i)
{
        return node_cmd(cl, "kill", i);
}

int e2e_cluster_pause(struct e2e_cluster *cl, unsigned i)
{
        return node_cmd(cl, "pause", i);
}

int e2e_cluster_resume(struct e2e_cluster *cl, unsigned i)
{
        return node_cmd(cl, "resume", i);
}

int e2e_cluster_restart(struct e2e_cluster *cl, unsigned i)
{
        return node_cmd(cl, "restart", i);
}

int e2e_cluster_wait(struct e2e_cluster *cl)
{
        if (!cl->dir[0])
                return -EINVAL;
        return run_script(E2E_CLUSTER_TIMEOUT_MS, "wait", cl->dir, NULL);
}

int e2e_cluster_reshard(struct e2e_cluster *cl, unsigned from, unsigned to, unsigned slots)
{
        char f[16], t[16], s[16];

        if (!cl->dir[0] || from < 1 || from > cl->n || to < 1 || to > cl->n)
                return -EINVAL;
        snprintf(f, sizeof(f), "%u", from);
        snprintf(t, sizeof(t), "%u", to);
        snprintf(s, sizeof(s), "%u", slots);
        return run_script(E2E_CLUSTER_TIMEOUT_MS, "reshard", cl->dir, f, t, s, NULL);
}

/* ---- redis-cli ------------------------------------------------------------ */

/* Whether node i runs and is not stopped: its pidfile names a live,
 * unstopped redis-server on its port. */
static bool node_serves(const struct e2e_cluster *cl, unsigned i)
{
        char path[sizeof(cl->dir) + 32], buf[512], want[16];
        const char *state;
        long pid;
        FILE *f;
        size_t n;
        int got;

        snprintf(path, sizeof(path), "%s/node%u/redis.pid", cl->dir, i);
        f = fopen(path, "re");
        if (!f)
                return false;
        got = fscanf(f, "%ld", &pid);
        fclose(f);
        if (got != 1 || pid <= 0)
                return false;
        snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = '\0';
        state = strrchr(buf, ')');
        if (!state || state[1] != ' ' || !strchr("RSD", state[2]))
                return false;
        snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
        f = fopen(path, "re");
        if (!f)
                return false;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        for (size_t k = 0; k < n; k++)
                if (!buf[k])
                        buf[k] = ' ';
        buf[n] = '\0';
        snprintf(want, sizeof(want), ":%d", cl->ports[i - 1]);
        return strstr(buf, want) != NULL;
}

static int redis_cli(const struct e2e_cluster *cl, unsigned node, bool follow, char *out, size_t size,
                     const char *arg, va_list ap)
{
        const char *argv[CLI_ARGS_MAX + 12];
        char exe[4096], port[16], msg[512], out_path[sizeof(cl->dir) + 32], err_path[sizeof(cl->dir) + 32];
        size_t n = 0;
        long total, reply;
        int rc, st;

        if (!size)
                return -EINVAL;
        out[0] = '\0';
        if (!cl->dir[0] || node < 1 || node > cl->n)
                return -EINVAL;
        if (!find_exe(env_or("REDIS_CLI", "redis-cli"), exe, sizeof(exe)))
                return -ENOENT;
        snprintf(port, sizeof(port), "%d", cl->ports[node - 1]);
        argv[n++] = exe;
        argv[n++] = "-e";       /* an error reply is exit status 1 */
        argv[n++] = "--raw";
        if (follow)
                argv[n++] = "-c";
        argv[n++] = "-h";
        argv[n++] = "127.0.0.1";
        argv[n++] = "-p";
        argv[n++] = port;
        for (size_t k = 0; arg; arg = va_arg(ap, const char *), k++) {
                if (k == CLI_ARGS_MAX)
                        return -E2BIG;
                argv[n++] = arg;
        }
        argv[n] = NULL;
        /* Files, not pipes: one reader, no deadlock, any size. Named by pid
         * for forked tests running it at once. */
        snprintf(out_path, sizeof(out_path), "%s/cli-%d.out", cl->dir, (int)getpid());
        snprintf(err_path, sizeof(err_path), "%s/cli-%d.err", cl->dir, (int)getpid());
        st = run(argv, E2E_REDIS_CLI_TIMEOUT_MS, out_path, err_path);
        if (st < 0) {
                rc = st;
                goto out;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                read_text(err_path, msg, sizeof(msg));
                snprintf(out, size, "%.*s", (int)strcspn(msg, "\n"), msg[0] ? msg : "(redis-cli said nothing)");
                rc = -EREMOTEIO;
                goto out;
        }
        total = read_head(out_path, out, size);
        if (total < 0) {
                rc = (int)total;
                out[0] = '\0';
                goto out;
        }
        /* --raw ends every reply with a newline of its own. */
        reply = total > 0 && total <= (long)size && out[total - 1] == '\n' ? total - 1 : total;
        if (reply >= (long)size) {
                out[size - 1] = '\0';
                rc = -ENOBUFS;
                goto out;
        }
        out[reply] = '\0';
        rc = (int)reply;
out:
        unlink(out_path);
        unlink(err_path);
        return rc;
}

int e2e_redis_cli(const struct e2e_cluster *cl, char *out, size_t size, const char *arg, ...)
{
        unsigned node = 0;
        va_list ap;
        int rc;

        for (unsigned i = 1; i <= cl->n && !node; i++)
                if (node_serves(cl, i))
                        node = i;
        if (!node) {
                if (size)
                        snprintf(out, size, "no node of %s runs", cl->dir[0] ? cl->dir : "(no cluster)");
                return cl->dir[0] ? -ENOENT : -EINVAL;
        }
        va_start(ap, arg);
        rc = redis_cli(cl, node, true, out, size, arg, ap);
        va_end(ap);
        return rc;
}

int e2e_redis_cli_node(const struct e2e_cluster *cl, unsigned i, char *out, size_t size, const char *arg, ...)
{
        va_list ap;
        int rc;

        va_start(ap, arg);
        rc = redis_cli(cl, i, false, out, size, arg, ap);
        va_end(ap);
        return rc;
}

/* ---- the unchecked fixture ------------------------------------------------ */

void e2e_cluster_setup(void)
{
        char why[512];
        int rc;

        ck_assert_msg(e2e_have_redis(), "redis-server and redis-cli are not installed");
        rc = e2e_cluster_start(&e2e_fixture_cluster, 3, why, sizeof(why));
        ck_assert_msg(rc == 0, "Redis Cluster: %s", why);
}

void e2e_cluster_teardown(void)
{
        e2e_cluster_stop(&e2e_fixture_cluster);
}
