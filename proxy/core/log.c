/* Error log writer; see log.h. Lines are built on the stack and written with a
 * single write(2) so lines from several workers never interleave. */
#include "proxy/core/log.h"

#include "proxy/core/str.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_threshold = DM_LOG_INFO;
static atomic_bool log_is_json = false;
static atomic_int log_fd = 2;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void dm_log_setup(enum dm_log_level level, bool is_json, int fd)
{
    atomic_store(&log_threshold, (int)level);
    atomic_store(&log_is_json, is_json);
    atomic_store(&log_fd, fd);
}

int dm_log_level_parse(const char *s, enum dm_log_level *out_level)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out_level = (enum dm_log_level)i;
            return 0;
        }
    }
    return -1;
}

bool dm_log_enabled(enum dm_log_level level)
{
    return (int)level <= atomic_load_explicit(&log_threshold, memory_order_relaxed);
}

void dm_log(enum dm_log_level level, const char *subsys, const char *fmt, ...)
{
    if (!dm_log_enabled(level)) {
        return;
    }
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[64];
    snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (long)(tv.tv_usec / 1000));

    char line[4608];
    int n;
    if (atomic_load(&log_is_json)) {
        char esc[4096];
        dm_str_json_escape(esc, sizeof(esc), msg);
        n = snprintf(line, sizeof(line),
                     "{\"ts\":\"%s\",\"level\":\"%s\",\"sub\":\"%s\",\"msg\":\"%s\"}\n", ts,
                     level_names[level], subsys, esc);
    } else {
        n = snprintf(line, sizeof(line), "%s %-5s %s: %s\n", ts, level_names[level], subsys, msg);
    }
    if (n < 0) {
        return;
    }
    size_t len = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    if (len > 0 && line[len - 1] != '\n') {
        line[len - 1] = '\n';
    }
    ssize_t w = write(atomic_load(&log_fd), line, len);
    (void)w;
}
