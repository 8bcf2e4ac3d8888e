/* err.c: text for imgw's error codes, and the caller error buffer (see
 * err.h). Any thread. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

#include <uv.h>

const char *
imgw_strerror(int err)
{
    switch (err) {
#define IMGW__ERR_STR(name, code, msg) case code: return msg;
        IMGW_ERRNO_MAP(IMGW__ERR_STR)
#undef IMGW__ERR_STR
    case 0:
        return "success";
    default:
        return uv_strerror(err);
    }
}

const char *
imgw_err_name(int err)
{
    switch (err) {
#define IMGW__ERR_NAME(name, code, msg) case code: return #name;
        IMGW_ERRNO_MAP(IMGW__ERR_NAME)
#undef IMGW__ERR_NAME
    case 0:
        return "OK";
    default:
        return uv_err_name(err);
    }
}

void
imgw_err_fmt(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
