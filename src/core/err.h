/* Error text for the `char *err, size_t errlen` out-parameters every layer's fallible calls take. */
#pragma once
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

/* Formats the reason a call failed into err; err may be NULL or errlen 0 (then nothing is written). */
__attribute__((format(printf, 3, 4))) static inline void err_setf(char *err, size_t errlen, const char *fmt,
                                                                  ...)
{
    va_list ap;
    if (!err || !errlen) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
