/* google.protobuf.Struct built and read as JSON, for the places Istio carries free-form metadata: the xDS
 * Node's metadata (istio/ztunnel src/xds/client.rs `node()`), the CA request's metadata
 * (ImpersonatedIdentity, src/identity/caclient.rs), and zmeshd's view of a connected proxy. JSON goes through
 * jansson; the messages are protoc-c's, allocated with malloc so protobuf_c_message_free_unpacked(msg, NULL)
 * frees them. */
#pragma once
#include <stddef.h>

#include <jansson.h>

#include "google/protobuf/struct.pb-c.h"

/* Deepest JSON nesting converted (the same bound as every protobuf decode, PB_MAX_DEPTH). */
#define PB_STRUCT_MAX_DEPTH 100

/* A new empty Struct, or NULL. */
Google__Protobuf__Struct *pb_struct_new(void);
/* Sets key to a string value, replacing an earlier value of key. Returns 0 or -ENOMEM. */
int pb_struct_set_string(Google__Protobuf__Struct *st, const char *key, const char *value);
/* Sets key to the JSON value j (objects become Structs, arrays ListValues, integers doubles as in proto3's
 * JSON mapping), replacing an earlier value. Returns 0, -ENOMEM, or -ELOOP deeper than PB_STRUCT_MAX_DEPTH.
 */
int pb_struct_set_json(Google__Protobuf__Struct *st, const char *key, const json_t *j);
/* The string value of key, or NULL when absent or not a string. */
const char *pb_struct_get_string(const Google__Protobuf__Struct *st, const char *key);
/* The Struct as a JSON object (new reference), or NULL on allocation failure, nesting deeper than
 * PB_STRUCT_MAX_DEPTH or a key or string that is not UTF-8 (JSON cannot carry it). NaN and infinities, which
 * JSON cannot carry, become null. */
json_t *pb_struct_to_json(const Google__Protobuf__Struct *st);
