/* SPDX-License-Identifier: MIT */
#include "watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int kvd_watchdog_start(const char *const *argv)
{
        int p[2], st;
        pid_t pid;

        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                int rc = -errno;

                close(p[0]);
                close(p[1]);
                return rc;
        }
        if (pid == 0) {
                int devnull;

                /* Double fork: the watchdog is nobody's zombie. */
                if (fork() != 0)
                        _exit(0);
                setsid();
                devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (devnull >= 0) {
                        dup2(devnull, STDIN_FILENO);
                        dup2(devnull, STDOUT_FILENO);
                        dup2(devnull, STDERR_FILENO);
                }
                if (dup2(p[0], 3) < 0)
                        _exit(1);
                close_range(4, ~0u, 0);
                signal(SIGINT, SIG_IGN);
                signal(SIGTERM, SIG_IGN);
                for (;;) {
                        char c;
                        ssize_t n = read(3, &c, 1);

                        if (n < 0 && errno == EINTR)
                                continue;
                        break;
                }
                close(3);
                execv(argv[0], (char *const *)argv);
                _exit(127);
        }
        close(p[0]);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
        return p[1];
}
