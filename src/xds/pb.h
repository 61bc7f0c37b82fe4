/* Protobuf glue shared by zmesh's xDS, CA and ZDS code: the type URLs Istio uses, and google.protobuf.Any
 * packing and unpacking on top of the protoc-c code generated from proto/ (see proto/README.md). */
#pragma once
#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "google/protobuf/any.pb-c.h"

/* Prefix of every type URL Istio and Envoy send; what follows it is the message's full name. */
#define PB_TYPE_URL_PREFIX "type.googleapis.com/"
/* The two delta xDS resource types ztunnel subscribes to (istio/ztunnel src/xds/types.rs). */
#define PB_TYPE_URL_ADDRESS PB_TYPE_URL_PREFIX "istio.workload.Address"
#define PB_TYPE_URL_AUTHORIZATION PB_TYPE_URL_PREFIX "istio.security.Authorization"
/* zmesh's own type: which pods are in ambient mode, zmeshd -> node agents (proto/zmesh/enrolment.proto). */
#define PB_TYPE_URL_POD_ENROLMENT PB_TYPE_URL_PREFIX "zmesh.v1.PodEnrolment"

/* Longest type URL pb_any_pack writes or pb_any_unpack accepts, NUL included. Full names of the messages we
 * carry are far shorter; the bound keeps a hostile URL from being compared at length. */
#define PB_TYPE_URL_MAX 256

/* Deepest nesting accepted below the top-level message: Google's protobuf parsers (C++, Python) and prost,
 * which Istio's ztunnel uses, stop at 100 as well. protobuf-c itself has no bound and recurses once per
 * level, so a hostile message of a few MiB (a Struct inside a Struct ...) would exhaust the stack. */
#define PB_MAX_DEPTH 100

/* Writes PB_TYPE_URL_PREFIX + the full name of desc into buf[0..n) with a NUL. Returns the length without
 * the NUL, or -ENOSPC when it does not fit (buf then holds ""). */
int pb_type_url(const ProtobufCMessageDescriptor *desc, char *buf, size_t n);

/* Packs msg into *any: type_url = pb_type_url(msg's descriptor), value = its serialization. *any must be
 * zero-initialised or a previous result already released; on success the caller owns any->type_url and
 * any->value.data and frees them with pb_any_clear. Returns 0, -ENOMEM, or -ENOSPC (name too long). */
int pb_any_pack(const ProtobufCMessage *msg, Google__Protobuf__Any *any);

struct grpc_call;
/* Sends msg as one message of call, packed straight into the call's send queue (grpc_call_send_alloc).
 * Returns 0 or what grpc_call_send returns. */
int pb_call_send(struct grpc_call *call, const ProtobufCMessage *msg);

/* Frees what pb_any_pack allocated and re-initialises *any. Safe on an initialised, empty Any. */
void pb_any_clear(Google__Protobuf__Any *any);

/* Decodes data[0..len) as a desc message with protoc-c, after a pass over the wire format that refuses what
 * protobuf-c would accept or fail on badly: nesting deeper than PB_MAX_DEPTH (-ELOOP), field number 0 (which
 * protobuf-c takes as an unknown field when its tag is written in more than one byte, and then re-encodes as
 * bytes no parser accepts), undefined wire types, and truncated or overlong varints and lengths (-EBADMSG).
 * Groups (wire types 3 and 4) are refused too, as protobuf-c refuses them; Google's parsers would skip an
 * unknown group, but no message of these protocols has one. On success *out is a new message the caller frees
 * with protobuf_c_message_free_unpacked(*out, NULL). Returns 0, -EBADMSG or -ELOOP (*out NULL on failure);
 * any failure inside protobuf-c, allocation included, is -EBADMSG because protobuf-c does not say which.
 * Every zmesh decoder of untrusted protobuf goes through here. */
int pb_message_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                      ProtobufCMessage **out);

/* Unpacks any as a desc message. The URL must be exactly PB_TYPE_URL_PREFIX + desc's full name (the prefix
 * Istio and Envoy always use; anything else is a different or unknown type). On success *out is a new
 * message the caller frees with protobuf_c_message_free_unpacked(*out, NULL). Returns 0, -EPROTOTYPE when the
 * type URL names another type (or is empty or too long), or what pb_message_unpack returns for the bytes. */
int pb_any_unpack(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *desc,
                  ProtobufCMessage **out);
