/* SPDX-License-Identifier: MIT */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int max_level = LOG_INFO;
static bool use_syslog;

static const char *const level_names[] = {
        [LOG_ERR] = "err",   [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
};

void kvd_log_set_level(int level)
{
        max_level = level;
}

void kvd_log_to_syslog(void)
{
        openlog("kvdrived", LOG_PID | LOG_NDELAY, LOG_DAEMON);
        use_syslog = true;
}

int kvd_log_level_from_string(const char *s)
{
        for (int i = 0; i < (int)(sizeof(level_names) / sizeof(level_names[0])); i++)
                if (level_names[i] && strcmp(level_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

void kvd_log(int level, const char *fmt, ...)
{
        static int journal = -1;
        char line[1024];
        va_list ap;
        int saved = errno;

        if (level > max_level)
                return;
        if (journal < 0)
                journal = getenv("JOURNAL_STREAM") != NULL;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (use_syslog)
                syslog(level, "%s", line);
        else if (journal)
                fprintf(stderr, "<%d>%s\n", level, line);
        else
                fprintf(stderr, "kvdrived[%s]: %s\n",
                        level >= 0 && level <= LOG_DEBUG && level_names[level] ? level_names[level] : "?",
                        line);
        errno = saved;
}
