/* SPIFFE workload identities as Istio uses them: "spiffe://<trust domain>/ns/<namespace>/sa/<service
 * account>". */
#pragma once
#include <stddef.h>

/* Longest id text including the terminating NUL. Parsed and set ids always format within this bound. */
#define SPIFFE_MAX 512

/* The three parts of an identity, each NUL-terminated and non-empty. */
struct spiffe_id {
    char td[256];
    char ns[128];
    char sa[128];
};

/* Parses s[0..len) (need not be NUL-terminated) as "spiffe://td/ns/NS/sa/SA": exactly five non-empty
 * segments, literal "ns" and "sa" in positions 1 and 3, lowercase scheme, no query/fragment/control bytes,
 * and the whole text shorter than SPIFFE_MAX. Fills *out. Returns 0 or -EINVAL (out is then zeroed). */
int spiffe_parse(const char *s, size_t len, struct spiffe_id *out);

/* Writes "spiffe://td/ns/ns/sa/sa" and a NUL into buf[0..n). Returns the length without NUL, or -ENOSPC. */
int spiffe_format(const struct spiffe_id *id, char *buf, size_t n);

/* Sets *id from its parts: td defaults to "cluster.local" when NULL or empty, sa to "default" when NULL or
 * empty. ns is required. Returns 0, or -EINVAL when ns is missing, a part is too long or contains a byte the
 * parser would reject ('/', '?', '#', control bytes), or the formatted id would not fit SPIFFE_MAX. */
int spiffe_set(struct spiffe_id *id, const char *td, const char *ns, const char *sa);
