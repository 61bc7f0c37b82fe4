/* Environment settings read the way Istio's ztunnel reads them (src/config.rs in istio/ztunnel, whose
 * durations go through the duration_str crate): one duration parser for every duration variable. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* Parses a duration in Istio's syntax into milliseconds: a sum of <number><unit> terms ("500ms", "5s",
 * "1m30s", "1h", "1.5s", "2m + 10s"), units ns, us/µs, ms/msec, s/sec, m/min, h/hr, d, w; a bare number is
 * seconds. Whitespace around terms and '+' between them are allowed. Sub-millisecond remainders round down.
 * Returns 0, or -EINVAL (empty, unknown unit, stray characters, negative) or -ERANGE (overflow). */
int duration_parse_ms(const char *s, uint64_t *ms);
