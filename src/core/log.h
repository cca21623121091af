/* log.h - leveled logging to stderr; arguments below the level are never evaluated. */
#ifndef THZ_LOG_H
#define THZ_LOG_H

enum { THZ_LOG_ERROR = 0, THZ_LOG_WARN, THZ_LOG_INFO, THZ_LOG_DEBUG };

/* Read on every log call from any thread; set by main (SIGHUP). */
extern _Atomic int thz_log_level;

/* Parses "error", "warn", "info" or "debug"; returns -1 for anything else. */
int thz_log_level_parse(const char *name);
/* Names a level; returns a static string. */
const char *thz_log_level_name(int level);
/* Writes one line "TIME LEVEL [module] message" to stderr, atomically. */
void thz_log_write(int level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define THZ_LOG(level, module, ...)                                                                \
    do {                                                                                           \
        if ((level) <= thz_log_level) thz_log_write((level), (module), __VA_ARGS__);               \
    } while (0)
#define log_error(m, ...) THZ_LOG(THZ_LOG_ERROR, m, __VA_ARGS__)
#define log_warn(m, ...)  THZ_LOG(THZ_LOG_WARN, m, __VA_ARGS__)
#define log_info(m, ...)  THZ_LOG(THZ_LOG_INFO, m, __VA_ARGS__)
#define log_debug(m, ...) THZ_LOG(THZ_LOG_DEBUG, m, __VA_ARGS__)

#endif
