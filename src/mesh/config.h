/* Istio ztunnel's local config (LOCAL_XDS_PATH): a YAML LocalConfig
 * `{workloads: [...], services: [...], policies: [...]}` with camelCase fields and enum variant names
 * (istio/ztunnel src/xds.rs, LocalConfig), loaded into a new immutable snapshot. Unknown fields are errors.
 */
#pragma once
#include <stddef.h>

#include "mesh/model.h"

/* Inputs larger than this are rejected before parsing. */
#define CONFIG_MAX_FILE ((size_t)64 << 20)
/* Longest accepted scalar (string, key, number) in bytes. */
#define CONFIG_MAX_STR 1024

/* Loads a LocalConfig YAML file into a new snapshot (refcount 1, owned by the caller via *out).
 * On error returns -EINVAL (or -errno for I/O, -EFBIG for an oversized file, -ENOMEM) and writes
 * "<file>:<line>:<col>: <field>: <reason>" (1-based line/column) into err (always NUL-terminated when
 * errlen > 0); *out is untouched. */
int config_load_file(const char *path, struct snapshot **out, char *err, size_t errlen);
/* Same from memory (buf need not be NUL-terminated and is not kept); name is used in messages. */
int config_load_buf(const char *buf, size_t len, const char *name, struct snapshot **out, char *err,
                    size_t errlen);
