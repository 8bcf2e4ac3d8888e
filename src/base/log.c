/* log.c: see log.h. Any thread. */
#include "log.h"

#include "clock.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int imgw_log_level_ = IMGW_LOG_INFO_L;
static _Thread_local char thread_tag[16] = "main";

static const char *const level_names[] = {"TRACE", "DEBUG", "INFO", "WARN",
                                          "ERROR"};

int
imgw_log_parse_level(const char *s)
{
    static const char *const names[] = {"trace", "debug", "info", "warn",
                                        "error"};
    if (s == NULL)
        return -1;
    for (int i = 0; i < 5; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return IMGW_LOG_WARN_L;
    if (strcasecmp(s, "off") == 0)
        return IMGW_LOG_OFF;
    return -1;
}

void
imgw_log_set_level(int level)
{
    imgw_log_level_ = level;
}

void
imgw_log_set_thread(const char *tag)
{
    snprintf(thread_tag, sizeof(thread_tag), "%s", tag);
}

uint64_t
imgw_log_now_sec(void)
{
    return imgw_clock_coarse_s();
}

void
imgw_log_write(int level, const char *file, int line, const char *fmt, ...)
{
    char buf[1024];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    imgw_clock_wall_ts(&ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
    const char *base = strrchr(file, '/');
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, ".%03ldZ %-5s [%s] %s:%d ",
                          ts.tv_nsec / 1000000,
                          level_names[level < 5 ? level : 4], thread_tag,
                          base ? base + 1 : file, line);
    if (n < sizeof(buf)) {
        va_start(ap, fmt);
        int w = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
        va_end(ap);
        if (w > 0)
            n += (size_t)w;
    }
    if (n > sizeof(buf) - 2)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    ssize_t r = write(STDERR_FILENO, buf, n);
    (void)r;
}
