/* SPDX-License-Identifier: MIT */
/* The unit test's Redis Cluster (rcluster-cluster.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "clock.h"
#include "macro.h"
#include "rcluster-cluster.h"

/* Shared with tools/redis-cluster: starts that pick ports take turns. */
#define PORT_LOCK "/tmp/kvdrive-redis-cluster.lock"

struct cluster cl;
static pid_t main_pid;

/* The redis-servers started, each with the process that started it: each
 * process kills its own at exit (Check forks each test). */
static struct {
        pid_t pid, by;
} spawned[64];
static unsigned n_spawned;

/* ---- the cluster ------------------------------------------------------ */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
        remove(path);
        return 0;
}

static void kill_mine(void)
{
        for (unsigned i = 0; i < n_spawned; i++) {
                if (spawned[i].by != getpid() || spawned[i].pid <= 0)
                        continue;
                kill(spawned[i].pid, SIGCONT);
                kill(spawned[i].pid, SIGKILL);
                waitpid(spawned[i].pid, NULL, 0);
                spawned[i].pid = 0;
        }
}

void cluster_stop(void)
{
        kill_mine();
        if (getpid() == main_pid && cl.dir[0])
                nftw(cl.dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        cl = (struct cluster){ 0 };
}

static void at_exit(void)
{
        cluster_stop();
}

/* Runs redis-cli -h 127.0.0.1 -p port args... (NULL-terminated), its output
 * into out. Returns its exit status, -1. */
int cli(char *out, size_t size, int port, ...)
{
        const char *argv[32];
        char p[16];
        int argc = 0, fds[2], status = -1;
        size_t len = 0;
        const char *a;
        va_list ap;
        pid_t pid;

        snprintf(p, sizeof(p), "%d", port);
        argv[argc++] = "redis-cli";
        argv[argc++] = "-h";
        argv[argc++] = "127.0.0.1";
        argv[argc++] = "-p";
        argv[argc++] = p;
        va_start(ap, port);
        while (argc < (int)ARRAY_SIZE(argv) - 1 && (a = va_arg(ap, const char *)))
                argv[argc++] = a;
        va_end(ap);
        argv[argc] = NULL;
        out[0] = '\0';
        if (pipe2(fds, O_CLOEXEC) < 0)
                return -1;
        pid = fork();
        if (pid == 0) {
                int nul = open("/dev/null", O_RDWR);

                dup2(fds[1], 1);
                dup2(nul, 0);
                dup2(nul, 2);
                execvp("redis-cli", (char **)argv);
                _exit(127);
        }
        close(fds[1]);
        for (;;) {
                char buf[4096];
                ssize_t n = read(fds[0], buf, sizeof(buf));
                size_t k;

                if (n <= 0)
                        break;
                k = MIN((size_t)n, size - 1 - len);
                memcpy(out + len, buf, k);
                len += k;
        }
        close(fds[0]);
        out[len] = '\0';
        if (pid < 0 || waitpid(pid, &status, 0) < 0)
                return -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void spawn_redis(int i)
{
        char port[16], dir[128];
        pid_t pid;

        snprintf(port, sizeof(port), "%d", cl.port[i]);
        snprintf(dir, sizeof(dir), "%s/%d", cl.dir, cl.port[i]);
        mkdir(dir, 0700);
        pid = fork();
        if (pid == 0) {
                int nul = open("/dev/null", O_RDONLY), log;

                /* Gone with the process that started it, however that ends. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (chdir(dir) < 0)
                        _exit(127);
                log = open("redis.log", O_WRONLY | O_CREAT | O_APPEND, 0600);
                dup2(nul, 0);
                if (log >= 0) {
                        dup2(log, 1);
                        dup2(log, 2);
                }
                execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--cluster-enabled",
                       "yes", "--cluster-config-file", "nodes.conf", "--cluster-require-full-coverage", "no",
                       "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                       (char *)NULL);
                _exit(127);
        }
        cl.pid[i] = pid;
        if (pid > 0 && n_spawned < ARRAY_SIZE(spawned)) {
                spawned[n_spawned].pid = pid;
                spawned[n_spawned].by = getpid();
                n_spawned++;
        }
}

/* Node i answers, and it is the process we started. */
static bool node_answers(int i)
{
        char out[8192], want[48];

        if (cli(out, sizeof(out), cl.port[i], "info", "server", NULL) != 0)
                return false;
        snprintf(want, sizeof(want), "process_id:%d\r", (int)cl.pid[i]);
        return strstr(out, want) != NULL;
}

static bool wait_answers(int i, unsigned ms)
{
        uint64_t end = kvd_now_ns() + ms * MSEC;

        while (!node_answers(i)) {
                if (kvd_now_ns() > end || waitpid(cl.pid[i], NULL, WNOHANG) == cl.pid[i])
                        return false;
                usleep(20000);
        }
        return true;
}

static bool cluster_agrees(void)
{
        char out[8192];

        for (int i = 0; i < NODES; i++)
                if (cli(out, sizeof(out), cl.port[i], "cluster", "info", NULL) != 0 ||
                    !strstr(out, "cluster_state:ok") || !strstr(out, "cluster_slots_assigned:16384") ||
                    !strstr(out, "cluster_known_nodes:3"))
                        return false;
        return true;
}

static bool port_free(int port)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        bool ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

        if (fd >= 0)
                close(fd);
        return ok;
}

static bool try_start(void)
{
        char addr[NODES][32], out[16384];
        uint64_t end;
        int lock, base = 0;
        bool ok = true;

        snprintf(cl.dir, sizeof(cl.dir), "/tmp/kvd-rcluster-XXXXXX");
        if (!mkdtemp(cl.dir)) {
                cl.dir[0] = '\0';
                return false;
        }
        /* Ports and bus ports (+10000) free, bound before the lock goes. */
        lock = open(PORT_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (lock >= 0)
                flock(lock, LOCK_EX);
        for (int tries = 0; tries < 200 && !base; tries++) {
                int b = 20000 + (int)(random() % 9000);

                base = b;
                for (int i = 0; i < NODES; i++)
                        if (!port_free(b + i) || !port_free(b + i + 10000))
                                base = 0;
        }
        for (int i = 0; i < NODES && base; i++) {
                cl.port[i] = base + i;
                spawn_redis(i);
        }
        for (int i = 0; i < NODES; i++)
                ok = ok && base && wait_answers(i, 10000);
        if (lock >= 0)
                close(lock);
        if (!ok)
                return false;
        for (int i = 0; i < NODES; i++)
                snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", cl.port[i]);
        if (cli(out, sizeof(out), cl.port[0], "--cluster", "create", addr[0], addr[1], addr[2], "--cluster-replicas",
                "0", "--cluster-yes", NULL) != 0)
                return false;
        end = kvd_now_ns() + 30000 * MSEC;
        while (!cluster_agrees()) {
                if (kvd_now_ns() > end)
                        return false;
                usleep(50000);
        }
        for (int i = 0; i < NODES; i++) {
                if (cli(out, sizeof(out), cl.port[i], "cluster", "myid", NULL) != 0 || strlen(out) < 40)
                        return false;
                snprintf(cl.id[i], sizeof(cl.id[i]), "%.40s", out);
        }
        return true;
}

void cluster_start(void)
{
        for (int attempt = 0; attempt < 3 && !cl.ok; attempt++) {
                cluster_stop();
                cl.ok = try_start();
        }
}

void cluster_init(void)
{
        main_pid = getpid();
        atexit(at_exit);
}
