/* Error log: one line per event (time, level, subsystem, message, key=value
 * fields), text or JSON lines. Thread-safe: each line is one write(2). The
 * access log is separate (proxy/access_log.c). Never pass secrets. */
#ifndef DM_CORE_LOG_H
#define DM_CORE_LOG_H

#include <stdbool.h>

enum dm_log_level {
    DM_LOG_ERROR = 0,
    DM_LOG_WARN,
    DM_LOG_INFO,
    DM_LOG_DEBUG,
    DM_LOG_TRACE,
};

/* dm_log_setup sets the threshold, the format and the output fd (2 = stderr). */
void dm_log_setup(enum dm_log_level level, bool is_json, int fd);

/* dm_log_level_parse maps "error".."trace" to a level; returns -1 if unknown. */
int dm_log_level_parse(const char *s, enum dm_log_level *out_level);

/* dm_log_enabled tells whether a level would be written (to skip costly args). */
bool dm_log_enabled(enum dm_log_level level);

/* dm_log writes one line if level passes the threshold. */
void dm_log(enum dm_log_level level, const char *subsys, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define DM_LOG_ERR(sub, ...)     dm_log(DM_LOG_ERROR, sub, __VA_ARGS__)
#define DM_LOG_WARNING(sub, ...) dm_log(DM_LOG_WARN, sub, __VA_ARGS__)
#define DM_LOG_INFO_(sub, ...)   dm_log(DM_LOG_INFO, sub, __VA_ARGS__)
#define DM_LOG_DBG(sub, ...)                                                                       \
    do {                                                                                           \
        if (dm_log_enabled(DM_LOG_DEBUG)) {                                                        \
            dm_log(DM_LOG_DEBUG, sub, __VA_ARGS__);                                                \
        }                                                                                          \
    } while (0)

#endif
