/* The conversion helpers of src/zmeshd/l7.c shared with the other L7 conversions (src/zmeshd/vs.c): one way
 * to read a manifest's JSON fields, report findings that name the field, and check a packed resource with the
 * waypoint's own builder. Private to src/zmeshd. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mesh/l7authz.h"
#include "zmeshd/manifest.h"

#include <protobuf-c/protobuf-c.h>

/* One conversion: where the document came from, where findings go, the arena its protobuf lives in. */
struct conv {
    const struct manifest_src *src;
    manifest_report_fn report;
    void *ud;
    struct l7_arena a;
    bool failed; /* an ERROR was reported */
    bool oom;    /* an allocation failed (no finding: the result is -ENOMEM) */
    const char *ns;
};

/* A field path into buf for a finding; cut when longer than buf (messages only). */
void l7c_fld(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* True when an ERROR was reported or an allocation failed. */
bool l7c_bad(const struct conv *c);
/* Reports a finding on field (an ERROR marks the conversion failed). */
void l7c_finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Zeroed memory / a copy of s in c's arena (NULL, and c->oom, on out of memory). */
void *l7c_alloc(struct conv *c, size_t n);
char *l7c_dup(struct conv *c, const char *s);
/* Every key of obj not in allowed (NULL-terminated) is a WARN "unknown field, ignored". */
void l7c_unknown_keys(struct conv *c, const json_t *obj, const char *path, const char *const *allowed);
/* obj[key] of the named JSON type: 1 and *out when present, 0 absent or null, -1 (ERROR reported) else. */
int l7c_get_str(struct conv *c, const json_t *obj, const char *key, const char *path, const char **out);
int l7c_get_obj(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out);
int l7c_get_list(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out);
int l7c_get_int(struct conv *c, const json_t *obj, const char *key, const char *path, long long lo,
                long long hi, long long *out);
/* A list of strings into an arena array. */
int l7c_get_strs(struct conv *c, const json_t *obj, const char *key, const char *path, char ***out,
                 size_t *n);
/* metadata: name (required), namespace (default "default"), creationTimestamp; sets c->ns. 0 or -1. */
int l7c_meta(struct conv *c, const json_t *obj, const char **ns, const char **name, int64_t *created);
/* Packs msg and compiles it with the waypoint's builder (an ERROR on "spec" naming the model's field when it
 * refuses). 0 with *pb (malloc'd) and *len, -EINVAL or -ENOMEM. */
int l7c_pack_and_check(struct conv *c, const ProtobufCMessage *msg, const char *type_url, const char *name,
                       uint8_t **pb, size_t *len);
