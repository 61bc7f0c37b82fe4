/* Any packing and type URLs; see pb.h. */
#include "xds/pb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "h2/grpc.h"

int pb_type_url(const ProtobufCMessageDescriptor *desc, char *buf, size_t n)
{
    int len = snprintf(buf, n, "%s%s", PB_TYPE_URL_PREFIX, desc->name);
    if (len < 0 || (size_t)len >= n) {
        if (n > 0) buf[0] = '\0';
        return -ENOSPC;
    }
    return len;
}

int pb_call_send(struct grpc_call *call, const ProtobufCMessage *msg)
{
    int err;
    uint8_t *buf = grpc_call_send_alloc(call, protobuf_c_message_get_packed_size(msg), &err);
    if (!buf) return err;
    protobuf_c_message_pack(msg, buf);
    return 0;
}

int pb_any_pack(const ProtobufCMessage *msg, Google__Protobuf__Any *any)
{
    char url[PB_TYPE_URL_MAX];
    int rc = pb_type_url(msg->descriptor, url, sizeof(url));
    if (rc < 0) return rc;
    size_t size = protobuf_c_message_get_packed_size(msg);
    /* malloc(0) may return NULL; an empty message still gets a valid buffer so NULL always means failure. */
    uint8_t *data = malloc(size ? size : 1);
    char *type_url = strdup(url);
    if (!data || !type_url) {
        free(data);
        free(type_url);
        return -ENOMEM;
    }
    protobuf_c_message_pack(msg, data);
    google__protobuf__any__init(any);
    any->type_url = type_url;
    any->value.data = data;
    any->value.len = size;
    return 0;
}

void pb_any_clear(Google__Protobuf__Any *any)
{
    /* protoc-c's initialiser points empty strings at a shared constant, which must not be freed. */
    if (any->type_url && any->type_url != protobuf_c_empty_string) free(any->type_url);
    free(any->value.data);
    google__protobuf__any__init(any);
}

/* Wire types (protobuf encoding spec); 3 and 4 are proto2 groups, which these protocols never use. */
enum pb_wire_type {
    PB_WIRE_VARINT = 0,
    PB_WIRE_I64 = 1,
    PB_WIRE_LEN = 2,
    PB_WIRE_I32 = 5,
};
/* A varint is at most 10 bytes (64 bits, 7 per byte). */
#define PB_VARINT_MAX 10
/* Field numbers are 29 bits. */
#define PB_FIELD_NUMBER_MAX ((1u << 29) - 1)

/* Reads a varint at p[*i..n); advances *i. Returns 0 or -EBADMSG (truncated or longer than 10 bytes). */
static int read_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *v)
{
    uint64_t x = 0;
    for (unsigned k = 0; k < PB_VARINT_MAX; k++) {
        if (*i >= n) return -EBADMSG;
        uint8_t b = p[(*i)++];
        x |= (uint64_t)(b & 0x7f) << (7 * k);
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -EBADMSG;
}

/* Checks one message's wire format and, through the fields desc declares as messages, its sub-messages.
 * depth counts the levels below the top-level message. Recursion is bounded by PB_MAX_DEPTH. */
static int scan(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t n, unsigned depth)
{
    size_t i = 0;
    while (i < n) {
        uint64_t tag, v;
        if (read_varint(p, n, &i, &tag) < 0) return -EBADMSG;
        uint64_t num = tag >> 3;
        if (num == 0 || num > PB_FIELD_NUMBER_MAX) return -EBADMSG;
        switch (tag & 7) {
        case PB_WIRE_VARINT:
            if (read_varint(p, n, &i, &v) < 0) return -EBADMSG;
            break;
        case PB_WIRE_I64:
            if (n - i < 8) return -EBADMSG;
            i += 8;
            break;
        case PB_WIRE_I32:
            if (n - i < 4) return -EBADMSG;
            i += 4;
            break;
        case PB_WIRE_LEN: {
            if (read_varint(p, n, &i, &v) < 0 || v > n - i) return -EBADMSG;
            const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(desc, (unsigned)num);
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                if (depth + 1 > PB_MAX_DEPTH) return -ELOOP;
                int rc = scan(f->descriptor, p + i, (size_t)v, depth + 1);
                if (rc < 0) return rc;
            }
            i += (size_t)v;
            break;
        }
        default:
            return -EBADMSG;
        }
    }
    return 0;
}

int pb_message_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                      ProtobufCMessage **out)
{
    *out = NULL;
    int rc = scan(desc, data, len, 0);
    if (rc < 0) return rc;
    /* What the scan cannot see (a packed field whose length is not a whole number of elements, an
     * allocation failure) protobuf-c still refuses, without saying which. */
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, len, data);
    if (!m) return -EBADMSG;
    *out = m;
    return 0;
}

int pb_any_unpack(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *desc,
                  ProtobufCMessage **out)
{
    char want[PB_TYPE_URL_MAX];
    *out = NULL;
    if (pb_type_url(desc, want, sizeof(want)) < 0) return -EPROTOTYPE;
    if (!any->type_url || strnlen(any->type_url, PB_TYPE_URL_MAX) >= PB_TYPE_URL_MAX) return -EPROTOTYPE;
    if (strcmp(any->type_url, want) != 0) return -EPROTOTYPE;
    return pb_message_unpack(desc, any->value.data, any->value.len, out);
}
