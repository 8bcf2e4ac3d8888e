/*
 * log.h: leveled logging to stderr with a timestamp and the calling loop's
 * id. Any thread. A line is formatted into a stack buffer and written with
 * one write(2), so lines from different threads never interleave.
 *
 * Hot paths log at debug or below only; imgw_log_enabled() is one load and
 * compare, so IMGW_LOG_DEBUG costs nothing when debug is off.
 */
#ifndef IMGW_LOG_H
#define IMGW_LOG_H

#include <stdint.h>

typedef enum imgw_log_level_e {
    IMGW_LOG_TRACE = 0,
    IMGW_LOG_DEBUG_L,
    IMGW_LOG_INFO_L,
    IMGW_LOG_WARN_L,
    IMGW_LOG_ERROR_L,
    IMGW_LOG_OFF
} imgw_log_level_t;

extern int imgw_log_level_;

/** Parses "trace|debug|info|warn|error" (case-insensitive); -1 if unknown. */
int imgw_log_parse_level(const char *s);
void imgw_log_set_level(int level);
/** Sets the calling thread's tag shown in each line ("main", "loop3", "mq"). */
void imgw_log_set_thread(const char *tag);
void imgw_log_write(int level, const char *file, int line, const char *fmt,
                    ...) __attribute__((format(printf, 4, 5)));

#define imgw_log_enabled(lvl) ((lvl) >= imgw_log_level_)
#define IMGW__LOG(lvl, ...)                                                  \
    do {                                                                     \
        if (imgw_log_enabled(lvl))                                           \
            imgw_log_write(lvl, __FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)
#define IMGW_LOG_TRACE_(...) IMGW__LOG(IMGW_LOG_TRACE, __VA_ARGS__)
#define IMGW_LOG_DEBUG(...) IMGW__LOG(IMGW_LOG_DEBUG_L, __VA_ARGS__)
#define IMGW_LOG_INFO(...) IMGW__LOG(IMGW_LOG_INFO_L, __VA_ARGS__)
#define IMGW_LOG_WARN(...) IMGW__LOG(IMGW_LOG_WARN_L, __VA_ARGS__)
#define IMGW_LOG_ERROR(...) IMGW__LOG(IMGW_LOG_ERROR_L, __VA_ARGS__)

/*
 * Rate-limited warning: at most one line per second per call site, with the
 * count of suppressed lines. For anything a peer can trigger at will.
 */
#define IMGW_LOG_WARN_RL(...)                                                \
    do {                                                                     \
        static _Thread_local uint64_t imgw__rl_sec_;                         \
        static _Thread_local uint64_t imgw__rl_dropped_;                     \
        uint64_t imgw__now_ = imgw_log_now_sec();                            \
        if (imgw__now_ != imgw__rl_sec_) {                                   \
            imgw__rl_sec_ = imgw__now_;                                      \
            if (imgw__rl_dropped_)                                           \
                IMGW_LOG_WARN("(%llu similar lines suppressed)",             \
                              (unsigned long long)imgw__rl_dropped_);        \
            imgw__rl_dropped_ = 0;                                           \
            IMGW_LOG_WARN(__VA_ARGS__);                                      \
        } else {                                                             \
            imgw__rl_dropped_++;                                             \
        }                                                                    \
    } while (0)

uint64_t imgw_log_now_sec(void);

#endif
