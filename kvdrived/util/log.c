/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <time.h>
#include <unistd.h>

/* Process-wide by nature (one daemon, one log); written at start and on
 * SIGHUP by the loop thread, read by every thread: atomics. */
static int max_level = LOG_INFO;
static int file_fd = -1;                /* the log file, -1: none */
static bool to_stderr = true;
static bool to_journal;
static char file_path[256];             /* loop thread only */

static const char *const level_names[] = {
        [LOG_ERR] = "err",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void kvd_log_set_level(int level)
{
        __atomic_store_n(&max_level, level, __ATOMIC_RELAXED);
}

int kvd_log_level_from_string(const char *s)
{
        for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
                if (level_names[i] && strcmp(level_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

const char *kvd_log_level_name(int level)
{
        return level >= 0 && level <= LOG_DEBUG && level_names[level] ? level_names[level] : "?";
}

int kvd_log_default_file(char *buf, size_t size)
{
        const char *state = getenv("XDG_STATE_HOME");
        int n;

        if (geteuid() == 0)
                n = snprintf(buf, size, "/var/log/kvdrive/kvdrived.log");
        else if (state && state[0] == '/')
                n = snprintf(buf, size, "%s/kvdrive/kvdrived.log", state);
        else
                n = snprintf(buf, size, "/tmp/kvdrive-%u/kvdrived.log", (unsigned)geteuid());
        return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : 0;
}

/* Opens path for appending; creates its last directory if missing, and
 * refuses one (in a shared /tmp) that is not a directory of ours. */
static int open_file(const char *path)
{
        char dir[sizeof(file_path)];
        char *slash;
        struct stat st;
        int fd;

        if (strlen(path) >= sizeof(dir))
                return -ENAMETOOLONG;
        strcpy(dir, path);
        slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = '\0';
                if (mkdir(dir, 0750) < 0 && errno != EEXIST)
                        return -errno;
                if (lstat(dir, &st) < 0)
                        return -errno;
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR;
                if (st.st_uid != geteuid() && st.st_uid != 0)
                        return -EPERM;
        }
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0640);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return -EINVAL;
        }
        return fd;
}

int kvd_log_open_file(const char *path)
{
        int fd = open_file(path);

        if (fd < 0)
                return fd;
        snprintf(file_path, sizeof(file_path), "%s", path);
        if (file_fd >= 0) {
                /* Same descriptor number, new file: a thread writing now
                 * writes to one or the other, never to a reused fd. */
                dup2(fd, file_fd);
                close(fd);
        } else {
                __atomic_store_n(&file_fd, fd, __ATOMIC_RELEASE);
        }
        return 0;
}

int kvd_log_reopen(const char *path)
{
        if (__atomic_load_n(&file_fd, __ATOMIC_ACQUIRE) < 0)
                return 0;
        if (!path) {
                char same[sizeof(file_path)];

                memcpy(same, file_path, sizeof(same));
                return kvd_log_open_file(same);
        }
        return kvd_log_open_file(path);
}

void kvd_log_detached(void)
{
        __atomic_store_n(&to_stderr, false, __ATOMIC_RELEASE);
}

void kvd_log_to_journal(void)
{
        __atomic_store_n(&to_journal, true, __ATOMIC_RELEASE);
        __atomic_store_n(&to_stderr, false, __ATOMIC_RELEASE);
}

/* $JOURNAL_STREAM ("DEV:INO") names our stderr: the journal reads it. */
static bool stderr_is_journal(void)
{
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
                return false;
        return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

static void write_file(int fd, int level, const char *line)
{
        char buf[1200], stamp[40];
        struct timespec ts;
        struct tm tm;
        int n;

        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
        n = snprintf(buf, sizeof(buf), "%s.%03ld kvdrived[%ld]: %s: %s\n", stamp, ts.tv_nsec / 1000000,
                     (long)getpid(), kvd_log_level_name(level), line);
        if (n > (int)sizeof(buf) - 1) {
                n = (int)sizeof(buf) - 1;
                buf[n - 1] = '\n';
        }
        if (write(fd, buf, (size_t)n) < 0) {
                /* Nothing better to do: the log is where we would say so. */
        }
}

void kvd_log(int level, const char *fmt, ...)
{
        static int journal_stream = -1;
        char line[1024];
        va_list ap;
        int saved = errno, fd;

        if (level > __atomic_load_n(&max_level, __ATOMIC_RELAXED))
                return;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        fd = __atomic_load_n(&file_fd, __ATOMIC_ACQUIRE);
        if (fd >= 0)
                write_file(fd, level, line);
        if (__atomic_load_n(&to_journal, __ATOMIC_ACQUIRE))
                sd_journal_print(level, "%s", line);
        if (__atomic_load_n(&to_stderr, __ATOMIC_ACQUIRE)) {
                int js = __atomic_load_n(&journal_stream, __ATOMIC_RELAXED);

                if (js < 0) {
                        js = stderr_is_journal();
                        __atomic_store_n(&journal_stream, js, __ATOMIC_RELAXED);
                }
                if (js)
                        fprintf(stderr, "<%d>%s\n", level, line);
                else
                        fprintf(stderr, "kvdrived[%s]: %s\n", kvd_log_level_name(level), line);
        }
        errno = saved;
}
