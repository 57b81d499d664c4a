/* SPDX-License-Identifier: MIT */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "frame.h"
#include "watchdog.h"

extern char **environ;

/* ---- cleanup at exit -------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)ftw;
        if (flag == FTW_DP)
                rmdir(path);
        else
                unlink(path);
        return 0;
}

static void rm_rf(const char *dir)
{
        if (dir[0])
                nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* What the atexit handler needs, copied out of the fixture: a test's
 * struct kvd_test_daemon may live on a stack that is gone by then. */
#define REGISTRY_MAX 8
static struct {
        bool used;
        pid_t owner;            /* only the process that started it cleans up */
        pid_t pid;
        char dir[96];
        struct kvd_test_notify *notify; /* keeps it reachable for LeakSanitizer */
        int watchdog;                   /* see watchdog_start() */
} registry[REGISTRY_MAX];

/*
 * A watchdog process per temporary directory removes it when the test's
 * process dies in a way atexit() does not see (Check SIGKILLs a test that
 * times out, with its whole process group): util/watchdog.h. Returns the
 * pipe's write end, or -errno.
 */
static int watchdog_start(const char *dir)
{
        const char *const argv[] = { "/bin/rm", "-rf", "--", dir, NULL };

        return kvd_watchdog_start(argv);
}

static bool atexit_registered;

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* waitpid with a timeout (-1: forever). pid's status or -ETIMEDOUT. */
static int wait_pid_timeout(pid_t pid, int timeout_ms, int *ret_status)
{
        int64_t deadline = now_ms() + timeout_ms;
        int delay = 1;

        for (;;) {
                int st;
                pid_t r = waitpid(pid, &st, timeout_ms < 0 ? 0 : WNOHANG);

                if (r == pid) {
                        *ret_status = st;
                        return 0;
                }
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (timeout_ms >= 0 && now_ms() >= deadline)
                        return -ETIMEDOUT;
                sleep_ms(delay);
                if (delay < 20)
                        delay *= 2;
        }
}

static void cleanup_at_exit(void)
{
        pid_t self = getpid();

        for (int i = 0; i < REGISTRY_MAX; i++) {
                int st;

                if (!registry[i].used || registry[i].owner != self)
                        continue;
                if (registry[i].pid > 0) {
                        kill(registry[i].pid, SIGTERM);
                        if (wait_pid_timeout(registry[i].pid, 2000, &st) < 0) {
                                kill(registry[i].pid, SIGKILL);
                                wait_pid_timeout(registry[i].pid, -1, &st);
                        }
                }
                rm_rf(registry[i].dir);
                if (registry[i].watchdog >= 0)
                        close(registry[i].watchdog);
                registry[i].used = false;
        }
}

static int registry_add(struct kvd_test_daemon *d)
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
                registry[i].pid = 0;
                registry[i].notify = NULL;
                registry[i].watchdog = watchdog_start(d->dir);
                snprintf(registry[i].dir, sizeof(registry[i].dir), "%s", d->dir);
                d->slot = i;
                return 0;
        }
        return -ENOSPC;
}

static void registry_set_pid(const struct kvd_test_daemon *d, pid_t pid)
{
        if (d->slot >= 0)
                registry[d->slot].pid = pid;
}

static void registry_set_notify(const struct kvd_test_daemon *d, struct kvd_test_notify *n)
{
        if (d->slot >= 0)
                registry[d->slot].notify = n;
}

static void registry_del(struct kvd_test_daemon *d)
{
        if (d->slot >= 0) {
                if (registry[d->slot].watchdog >= 0)
                        close(registry[d->slot].watchdog);
                registry[d->slot].used = false;
        }
        d->slot = -1;
}

/* ---- the NOTIFY_SOCKET reader ----------------------------------------- */

struct kvd_test_notify {
        int fd;
        int stop[2];                    /* a pipe: closing stop[1] ends the thread */
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;            /* CLOCK_MONOTONIC; signalled on every message */
        /* Every message, '\n'-separated, NUL-terminated. Fixed, so that the
         * reader never allocates: the test forks while it runs. */
        char log[64 * 1024];
        size_t len;
};

/* Makes room in a full log: keeps every line but the older STATUS= ones. */
static void notify_compact(struct kvd_test_notify *n)
{
        const char *last_status = NULL;
        size_t out = 0;

        for (const char *p = n->log; *p;) {
                const char *nl = strchr(p, '\n');

                if (!strncmp(p, "STATUS=", 7))
                        last_status = p;
                p = nl ? nl + 1 : p + strlen(p);
        }
        for (char *p = n->log; *p;) {
                char *nl = strchr(p, '\n');
                size_t l = nl ? (size_t)(nl - p) + 1 : strlen(p);

                if (strncmp(p, "STATUS=", 7) || p == last_status) {
                        memmove(n->log + out, p, l);
                        out += l;
                }
                p += l;
        }
        n->len = out;
        n->log[out] = '\0';
}

static void notify_append(struct kvd_test_notify *n, const char *buf, size_t len)
{
        pthread_mutex_lock(&n->lock);
        if (n->len + len + 2 > sizeof(n->log))
                notify_compact(n);
        if (n->len + len + 2 <= sizeof(n->log)) {
                memcpy(n->log + n->len, buf, len);
                n->len += len;
                if (n->len == 0 || n->log[n->len - 1] != '\n')
                        n->log[n->len++] = '\n';
                n->log[n->len] = '\0';
        }
        pthread_cond_broadcast(&n->cond);
        pthread_mutex_unlock(&n->lock);
}

static void *notify_thread(void *arg)
{
        struct kvd_test_notify *n = arg;
        char buf[4096];

        for (;;) {
                struct pollfd pfd[2] = {
                        { .fd = n->fd, .events = POLLIN },
                        { .fd = n->stop[0], .events = POLLIN },
                };

                if (poll(pfd, 2, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                for (;;) {
                        ssize_t r = recv(n->fd, buf, sizeof(buf), MSG_DONTWAIT);

                        if (r < 0 && errno == EINTR)
                                continue;
                        if (r <= 0)
                                break;
                        notify_append(n, buf, (size_t)r);
                }
                if (pfd[1].revents)
                        break;
        }
        return NULL;
}

static struct kvd_test_notify *notify_free(struct kvd_test_notify *n)
{
        if (!n)
                return NULL;
        close(n->stop[1]);
        pthread_join(n->thread, NULL);
        close(n->stop[0]);
        close(n->fd);
        pthread_cond_destroy(&n->cond);
        pthread_mutex_destroy(&n->lock);
        free(n);
        return NULL;
}

/* Binds a datagram socket at path and starts its reader. 0 or -errno. */
static int notify_new(const char *path, struct kvd_test_notify **ret)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        struct kvd_test_notify *n = calloc(1, sizeof(*n));
        pthread_condattr_t ca;
        sigset_t all, old;
        int rc;

        if (!n)
                return -ENOMEM;
        n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (n->fd < 0) {
                rc = -errno;
                goto err_free;
        }
        memcpy(sa.sun_path, path, strlen(path) + 1);
        if (bind(n->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                rc = -errno;
                goto err_close;
        }
        if (pipe2(n->stop, O_CLOEXEC) < 0) {
                rc = -errno;
                goto err_close;
        }
        pthread_mutex_init(&n->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&n->cond, &ca);
        pthread_condattr_destroy(&ca);
        /* The reader takes no signals: they stay with the test's thread. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = -pthread_create(&n->thread, NULL, notify_thread, n);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc < 0)
                goto err_pipe;
        *ret = n;
        return 0;

err_pipe:
        close(n->stop[0]);
        close(n->stop[1]);
        pthread_cond_destroy(&n->cond);
        pthread_mutex_destroy(&n->lock);
err_close:
        close(n->fd);
err_free:
        free(n);
        return rc;
}

static bool log_has_line(const char *log, const char *line)
{
        size_t len = strlen(line);
        bool prefix = len > 0 && line[len - 1] == '=';
        const char *p = log;

        while (*p) {
                const char *nl = strchr(p, '\n');
                size_t l = nl ? (size_t)(nl - p) : strlen(p);

                if (prefix ? l >= len && !strncmp(p, line, len) : l == len && !strncmp(p, line, len))
                        return true;
                if (!nl)
                        break;
                p = nl + 1;
        }
        return false;
}

/* ---- fixture ----------------------------------------------------------- */

static int fail(struct kvd_test_daemon *d, int rc, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static int fail(struct kvd_test_daemon *d, int rc, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(d->error, sizeof(d->error), fmt, ap);
        va_end(ap);
        fprintf(stderr, "kvd_test_daemon: %s\n", d->error);
        return rc;
}

const char *kvd_test_status_str(int status, char *buf, size_t size)
{
        if (WIFEXITED(status))
                snprintf(buf, size, "exited with status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                snprintf(buf, size, "killed by signal %d (%s)%s", WTERMSIG(status),
                         strsignal(WTERMSIG(status)), WCOREDUMP(status) ? ", core dumped" : "");
        else
                snprintf(buf, size, "wait status 0x%x", (unsigned)status);
        return buf;
}

int kvd_test_daemon_path(const struct kvd_test_daemon *d, const char *name, char *buf,
                         size_t size)
{
        int n = snprintf(buf, size, "%s/%s", d->dir, name);

        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

int kvd_test_daemon_prepare(struct kvd_test_daemon *d)
{
        const char *base = getenv("TMPDIR");
        int rc;

        memset(d, 0, sizeof(*d));
        d->slot = -1;
        /* Socket paths must fit sun_path: fall back to /tmp for a long $TMPDIR. */
        if (!base || !*base || strlen(base) > 40)
                base = "/tmp";
        snprintf(d->dir, sizeof(d->dir), "%s/kvd-test-XXXXXX", base);
        if (!mkdtemp(d->dir)) {
                rc = -errno;
                d->dir[0] = '\0';
                return fail(d, rc, "mkdtemp under %s: %s", base, strerror(-rc));
        }
        rc = registry_add(d);
        if (rc < 0) {
                rm_rf(d->dir);
                d->dir[0] = '\0';
                return fail(d, rc, "too many fixture daemons at once");
        }
        if (kvd_test_daemon_path(d, "kvd.sock", d->socket_path, sizeof(d->socket_path)) < 0 ||
            kvd_test_daemon_path(d, "notify.sock", d->notify_path, sizeof(d->notify_path)) < 0) {
                rc = fail(d, -ENAMETOOLONG, "socket path in %s too long", d->dir);
                goto err_cleanup;
        }
        rc = notify_new(d->notify_path, &d->notify);
        if (rc < 0) {
                rc = fail(d, rc, "notify socket %s: %s", d->notify_path, strerror(-rc));
                goto err_cleanup;
        }
        registry_set_notify(d, d->notify);
        return 0;

err_cleanup:
        rm_rf(d->dir);
        d->dir[0] = '\0';
        registry_del(d);
        return rc;
}

static bool env_is_replaced(const char *entry)
{
        static const char *const names[] = { "NOTIFY_SOCKET=", "LISTEN_FDS=", "LISTEN_PID=",
                                             "LISTEN_FDNAMES=" };

        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (!strncmp(entry, names[i], strlen(names[i])))
                        return true;
        return false;
}

int kvd_test_daemon_spawn(struct kvd_test_daemon *d, const char *const *argv,
                          const char *const *env)
{
        char notify_env[sizeof(d->notify_path) + 16], log_path[sizeof(d->dir) + 16];
        size_t n_environ = 0, n_extra = 0, k = 0;
        const char **envp;
        int errpipe[2], child_errno = 0, rc = 0;
        pid_t parent = getpid(), pid;
        ssize_t n;

        if (!d->dir[0] || d->pid > 0)
                return fail(d, -EINVAL, "spawn: fixture not prepared or already running");
        if (access(argv[0], X_OK) < 0)
                return fail(d, -errno, "cannot execute %s: %s", argv[0], strerror(errno));
        for (char **e = environ; e && *e; e++)
                n_environ++;
        for (const char *const *e = env; e && *e; e++)
                n_extra++;
        envp = calloc(n_environ + n_extra + 2, sizeof(*envp));
        if (!envp)
                return fail(d, -ENOMEM, "out of memory");
        for (char **e = environ; e && *e; e++)
                if (!env_is_replaced(*e))
                        envp[k++] = *e;
        snprintf(notify_env, sizeof(notify_env), "NOTIFY_SOCKET=%s", d->notify_path);
        envp[k++] = notify_env;
        for (const char *const *e = env; e && *e; e++)
                envp[k++] = *e;
        envp[k] = NULL;

        if (d->opts.log_file && kvd_test_daemon_path(d, "kvdrived.log", log_path, sizeof(log_path)) < 0) {
                rc = fail(d, -ENAMETOOLONG, "log path in %s too long", d->dir);
                goto out;
        }
        if (pipe2(errpipe, O_CLOEXEC) < 0) {
                rc = fail(d, -errno, "pipe: %s", strerror(errno));
                goto out;
        }
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                rc = fail(d, -errno, "fork: %s", strerror(errno));
                close(errpipe[0]);
                close(errpipe[1]);
                goto out;
        }
        if (pid == 0) {
                sigset_t all;
                int e;

                close(errpipe[0]);
                /* Die with the test: Check may SIGKILL a timed-out test. */
                if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
                        _exit(127);
                /* stdout is the TAP stream of the test. */
                if (d->opts.log_file) {
                        int lfd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

                        if (lfd < 0 || dup2(lfd, STDERR_FILENO) < 0)
                                _exit(127);
                }
                dup2(STDERR_FILENO, STDOUT_FILENO);
                if (d->opts.fsize_limit) {
                        struct rlimit rl = { d->opts.fsize_limit, d->opts.fsize_limit };

                        if (setrlimit(RLIMIT_FSIZE, &rl) < 0)
                                _exit(127);
                }
                sigemptyset(&all);
                sigprocmask(SIG_SETMASK, &all, NULL);
                signal(SIGPIPE, SIG_DFL);
                signal(SIGTERM, SIG_DFL);
                signal(SIGINT, SIG_DFL);
                signal(SIGALRM, SIG_DFL);
                execve(argv[0], (char *const *)argv, (char *const *)envp);
                e = errno;
                if (write(errpipe[1], &e, sizeof(e)) < 0)
                        _exit(127);
                _exit(127);
        }
        close(errpipe[1]);
        do
                n = read(errpipe[0], &child_errno, sizeof(child_errno));
        while (n < 0 && errno == EINTR);
        close(errpipe[0]);
        if (n == (ssize_t)sizeof(child_errno)) {
                int st;

                wait_pid_timeout(pid, -1, &st);
                rc = fail(d, -child_errno, "exec %s: %s", argv[0], strerror(child_errno));
                goto out;
        }
        d->pid = pid;
        d->reaped = false;
        registry_set_pid(d, pid);
out:
        free(envp);
        return rc;
}

bool kvd_test_daemon_notified(const struct kvd_test_daemon *d, const char *line)
{
        bool found;

        if (!d->notify)
                return false;
        pthread_mutex_lock(&d->notify->lock);
        found = log_has_line(d->notify->log, line);
        pthread_mutex_unlock(&d->notify->lock);
        return found;
}

bool kvd_test_daemon_alive(struct kvd_test_daemon *d)
{
        int st;

        if (d->pid <= 0 || d->reaped)
                return false;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                d->reaped = true;
                d->wait_status = st;
                registry_set_pid(d, 0);
                return false;
        }
        return true;
}

int kvd_test_daemon_wait_notify(struct kvd_test_daemon *d, const char *line, int timeout_ms)
{
        struct kvd_test_notify *n = d->notify;
        int64_t deadline = now_ms() + timeout_ms;
        int64_t exited_at = -1;
        char sbuf[96];
        int rc = 0;

        if (!n)
                return fail(d, -EINVAL, "no notify socket");
        pthread_mutex_lock(&n->lock);
        for (;;) {
                int64_t now = now_ms(), until;
                struct timespec ts;

                if (log_has_line(n->log, line))
                        break;
                /* Once the daemon is gone, give the reader a moment for its
                 * last datagrams. */
                if (exited_at < 0 && !kvd_test_daemon_alive(d))
                        exited_at = now;
                if (exited_at >= 0 && now - exited_at > 200) {
                        rc = -ECHILD;
                        break;
                }
                if (now >= deadline) {
                        rc = -ETIMEDOUT;
                        break;
                }
                until = deadline < now + 50 ? deadline : now + 50;
                clock_gettime(CLOCK_MONOTONIC, &ts);
                ts.tv_sec += (until - now) / 1000;
                ts.tv_nsec += (long)((until - now) % 1000) * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&n->cond, &n->lock, &ts);
        }
        if (rc == -ETIMEDOUT)
                fail(d, rc, "no %s from the daemon within %d ms (got: %s)", line, timeout_ms,
                     n->len ? n->log : "nothing");
        pthread_mutex_unlock(&n->lock);
        if (rc == -ECHILD) {
                if (!d->reaped)
                        return fail(d, rc, "waiting for %s: no daemon", line);
                return fail(d, rc, "daemon %s before sending %s (its stderr is above)",
                            kvd_test_status_str(d->wait_status, sbuf, sizeof(sbuf)), line);
        }
        return rc;
}

int kvd_test_daemon_kill(struct kvd_test_daemon *d, int sig)
{
        if (d->pid <= 0 || d->reaped)
                return -ESRCH;
        return kill(d->pid, sig) < 0 ? -errno : 0;
}

int kvd_test_daemon_wait_exit(struct kvd_test_daemon *d, int timeout_ms, int *ret_status)
{
        int st, rc;

        if (d->pid <= 0)
                return -ECHILD;
        if (!d->reaped) {
                rc = wait_pid_timeout(d->pid, timeout_ms, &st);
                if (rc < 0)
                        return rc;
                d->reaped = true;
                d->wait_status = st;
                registry_set_pid(d, 0);
        }
        if (ret_status)
                *ret_status = d->wait_status;
        return 0;
}

/* Stops the daemon and cleans up; with report, a non-zero exit is an error. */
static int daemon_stop(struct kvd_test_daemon *d, bool report)
{
        char sbuf[96];
        int rc = 0, st = 0;

        if (!d->dir[0])
                return 0;
        if (d->pid > 0 && !d->reaped) {
                kill(d->pid, SIGTERM);
                if (kvd_test_daemon_wait_exit(d, KVD_TEST_STOP_TIMEOUT_MS, &st) < 0) {
                        kill(d->pid, SIGKILL);
                        kvd_test_daemon_wait_exit(d, -1, &st);
                        if (report)
                                rc = fail(d, -ETIMEDOUT,
                                          "daemon did not exit within %d ms of SIGTERM",
                                          KVD_TEST_STOP_TIMEOUT_MS);
                }
        }
        if (report && rc == 0 && d->pid > 0 && d->reaped &&
            !(WIFEXITED(d->wait_status) && WEXITSTATUS(d->wait_status) == 0))
                rc = fail(d, -ECHILD, "daemon %s (its stderr is above)",
                          kvd_test_status_str(d->wait_status, sbuf, sizeof(sbuf)));
        d->notify = notify_free(d->notify);
        registry_set_notify(d, NULL);
        rm_rf(d->dir);
        d->dir[0] = '\0';
        registry_del(d);
        d->pid = 0;
        return rc;
}

int kvd_test_daemon_start(struct kvd_test_daemon *d, const char *const *extra_args)
{
        return kvd_test_daemon_start_opts(d, NULL, extra_args);
}

int kvd_test_daemon_start_opts(struct kvd_test_daemon *d, const struct kvd_test_opts *opts,
                               const char *const *extra_args)
{
        const char *exe = getenv("KVDRIVED");
        const char *argv[64];
        size_t n = 0;
        int rc;

        if (!exe || !*exe) {
                memset(d, 0, sizeof(*d));
                d->slot = -1;
                return fail(d, -ENOENT, "$KVDRIVED is not set (run the tests with meson test)");
        }
        rc = kvd_test_daemon_prepare(d);
        if (rc < 0)
                return rc;
        if (opts)
                d->opts = *opts;
        argv[n++] = exe;
        argv[n++] = "--foreground";
        argv[n++] = "--socket";
        argv[n++] = d->socket_path;
        argv[n++] = "--host-bytes";
        argv[n++] = "64M";
        /* Test daemons run side by side: no metrics endpoint unless a test
         * asks for one (its --metrics-listen comes later and wins). */
        argv[n++] = "--metrics-listen=off";
        for (const char *const *a = extra_args; a && *a; a++) {
                if (n + 1 >= sizeof(argv) / sizeof(argv[0])) {
                        rc = fail(d, -E2BIG, "too many daemon arguments");
                        goto err;
                }
                argv[n++] = *a;
        }
        argv[n] = NULL;
        rc = kvd_test_daemon_spawn(d, argv, NULL);
        if (rc < 0)
                goto err;
        rc = kvd_test_daemon_wait_notify(d, "READY=1", KVD_TEST_READY_TIMEOUT_MS);
        if (rc < 0)
                goto err;
        return 0;
err:
        daemon_stop(d, false);
        return rc;
}

int kvd_test_daemon_stop(struct kvd_test_daemon *d)
{
        return daemon_stop(d, true);
}

int kvd_test_run_capture(const char *const *argv, int timeout_ms, char **ret_out,
                         int *ret_status)
{
        int64_t deadline = now_ms() + timeout_ms;
        size_t len = 0, cap = 4096;
        char *out = malloc(cap);
        int pfd[2], st, rc = 0;
        pid_t pid;

        if (!out)
                return -ENOMEM;
        if (pipe2(pfd, O_CLOEXEC) < 0) {
                free(out);
                return -errno;
        }
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                rc = -errno;
                close(pfd[0]);
                close(pfd[1]);
                free(out);
                return rc;
        }
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(pfd[1], STDOUT_FILENO);
                signal(SIGPIPE, SIG_DFL);
                execv(argv[0], (char *const *)argv);
                fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
                _exit(127);
        }
        close(pfd[1]);
        for (;;) {
                struct pollfd p = { .fd = pfd[0], .events = POLLIN };
                int64_t left = deadline - now_ms();
                ssize_t n;

                if (left <= 0) {
                        rc = -ETIMEDOUT;
                        break;
                }
                if (poll(&p, 1, (int)left) <= 0)
                        continue;
                if (len + 1024 > cap) {
                        char *q = realloc(out, cap * 2);

                        if (!q) {
                                rc = -ENOMEM;
                                break;
                        }
                        out = q;
                        cap *= 2;
                }
                n = read(pfd[0], out + len, cap - len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                len += (size_t)n;
        }
        close(pfd[0]);
        out[len] = '\0';
        if (rc == 0 && wait_pid_timeout(pid, (int)(deadline - now_ms()) > 0 ?
                                        (int)(deadline - now_ms()) : 0, &st) < 0)
                rc = -ETIMEDOUT;
        if (rc < 0) {
                kill(pid, SIGKILL);
                wait_pid_timeout(pid, -1, &st);
                free(out);
                return rc;
        }
        *ret_out = out;
        *ret_status = st;
        return 0;
}

/* ---- raw protocol ------------------------------------------------------ */

int kvd_test_raw_connect(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int rc = -errno;

                close(fd);
                return rc;
        }
        return fd;
}

int kvd_test_raw_send_bytes(int sock, const void *buf, size_t len)
{
        ssize_t n;

        do
                n = send(sock, buf, len, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        return (size_t)n == len ? 0 : -EIO;
}

int kvd_test_raw_send(int sock, const Kvdrive__Request *req, int fd)
{
        size_t len = kvdrive__request__get_packed_size(req);
        uint8_t *buf = malloc(len ? len : 1);
        int rc;

        if (!buf)
                return -ENOMEM;
        kvdrive__request__pack(req, buf);
        rc = kvd_frame_send(sock, buf, len, fd, 0);
        free(buf);
        return rc;
}

int kvd_test_raw_recv(int sock, int timeout_ms, Kvdrive__Response **ret)
{
        size_t cap = KVD_FRAME_MAX_LIMIT + KVD_FRAME_HDR;
        uint8_t *buf = malloc(cap);
        struct pollfd pfd = { .fd = sock, .events = POLLIN };
        int fds[KVD_FRAME_MAX_FDS];
        const uint8_t *payload;
        Kvdrive__Response *r;
        unsigned nfds = 0;
        size_t plen;
        ssize_t n;
        int rc;

        if (!buf)
                return -ENOMEM;
        do
                rc = poll(&pfd, 1, timeout_ms);
        while (rc < 0 && errno == EINTR);
        if (rc == 0) {
                rc = -ETIMEDOUT;
                goto out;
        }
        if (rc < 0) {
                rc = -errno;
                goto out;
        }
        n = kvd_frame_recv(sock, buf, cap, fds, &nfds, MSG_DONTWAIT);
        for (unsigned i = 0; i < nfds; i++)
                close(fds[i]);
        if (n == 0) {
                rc = -ECONNRESET;
                goto out;
        }
        if (n < 0) {
                rc = (int)n;
                goto out;
        }
        rc = kvd_frame_parse(buf, (size_t)n, KVD_FRAME_MAX_LIMIT, &payload, &plen);
        if (rc < 0) {
                rc = -EBADMSG;
                goto out;
        }
        r = kvdrive__response__unpack(NULL, plen, payload);
        if (!r) {
                rc = -EBADMSG;
                goto out;
        }
        *ret = r;
        rc = 0;
out:
        free(buf);
        return rc;
}

int kvd_test_raw_call(int sock, const Kvdrive__Request *req, int fd, Kvdrive__Response **ret)
{
        int rc = kvd_test_raw_send(sock, req, fd);

        if (rc < 0)
                return rc;
        return kvd_test_raw_recv(sock, KVD_TEST_RECV_TIMEOUT_MS, ret);
}

int kvd_test_error_code(const Kvdrive__Response *r)
{
        if (!r || r->body_case != KVDRIVE__RESPONSE__BODY_ERROR || !r->error)
                return -1;
        return (int)r->error->code;
}

int kvd_test_raw_hello(int sock, uint64_t id, uint32_t *ret_max_frame, uint32_t *ret_max_items)
{
        Kvdrive__Hello hello = KVDRIVE__HELLO__INIT;
        Kvdrive__Request req = KVDRIVE__REQUEST__INIT;
        Kvdrive__Response *r = NULL;
        int rc;

        hello.version = KVD_PROTO_VERSION;
        hello.client_name = (char *)"kvd-test-raw";
        req.id = id;
        req.body_case = KVDRIVE__REQUEST__BODY_HELLO;
        req.hello = &hello;
        rc = kvd_test_raw_call(sock, &req, -1, &r);
        if (rc < 0)
                return rc;
        if (r->body_case != KVDRIVE__RESPONSE__BODY_HELLO || !r->hello || r->id != id ||
            r->hello->version != KVD_PROTO_VERSION) {
                char buf[160];

                fprintf(stderr, "kvd_test_raw_hello: got %s (id %llu)\n",
                        kvd_test_response_str(r, buf, sizeof(buf)), (unsigned long long)r->id);
                rc = -EPROTO;
        } else {
                if (ret_max_frame)
                        *ret_max_frame = r->hello->max_frame;
                if (ret_max_items)
                        *ret_max_items = r->hello->max_items;
        }
        kvdrive__response__free_unpacked(r, NULL);
        return rc;
}

const char *kvd_test_response_str(const Kvdrive__Response *r, char *buf, size_t size)
{
        static const char *const names[] = {
                [KVDRIVE__RESPONSE__BODY__NOT_SET] = "(no body)",
                [KVDRIVE__RESPONSE__BODY_HELLO] = "hello",
                [KVDRIVE__RESPONSE__BODY_REGISTER_NAMESPACE] = "register_namespace",
                [KVDRIVE__RESPONSE__BODY_REGISTER_POOL] = "register_pool",
                [KVDRIVE__RESPONSE__BODY_PUT] = "put",
                [KVDRIVE__RESPONSE__BODY_GET] = "get",
                [KVDRIVE__RESPONSE__BODY_LOOKUP] = "lookup",
                [KVDRIVE__RESPONSE__BODY_DELETE] = "delete",
                [KVDRIVE__RESPONSE__BODY_STATS] = "stats",
        };

        if (!r) {
                snprintf(buf, size, "(no response)");
        } else if (r->body_case == KVDRIVE__RESPONSE__BODY_ERROR && r->error) {
                const ProtobufCEnumValue *v =
                        protobuf_c_enum_descriptor_get_value(&kvdrive__error_code__descriptor,
                                                             (int)r->error->code);

                snprintf(buf, size, "error(%d: %s: %s)", (int)r->error->code,
                         v ? v->name : "?", r->error->message ? r->error->message : "");
        } else if ((size_t)r->body_case < sizeof(names) / sizeof(names[0]) &&
                   names[r->body_case]) {
                snprintf(buf, size, "%s", names[r->body_case]);
        } else {
                snprintf(buf, size, "body %d", (int)r->body_case);
        }
        return buf;
}

int kvd_test_memfd(size_t size, bool seal)
{
        int fd = memfd_create("kvd-test-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t)size) < 0 || (size && fallocate(fd, 0, 0, (off_t)size) < 0) ||
            (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)) {
                int rc = -errno;

                close(fd);
                return rc;
        }
        return fd;
}
