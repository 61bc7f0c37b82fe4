/* Any packing and type URLs; see pb.h. */
#include "xds/pb.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pb_type_url(const ProtobufCMessageDescriptor *desc, char *buf, size_t n)
{
    int len = snprintf(buf, n, "%s%s", PB_TYPE_URL_PREFIX, desc->name);
    if (len < 0 || (size_t)len >= n) {
        if (n > 0) buf[0] = '\0';
        return -ENOSPC;
    }
    return len;
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

int pb_any_unpack(const Google__Protobuf__Any *any, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out)
{
    char want[PB_TYPE_URL_MAX];
    *out = NULL;
    if (pb_type_url(desc, want, sizeof(want)) < 0) return -EPROTOTYPE;
    if (!any->type_url || strnlen(any->type_url, PB_TYPE_URL_MAX) >= PB_TYPE_URL_MAX) return -EPROTOTYPE;
    if (strcmp(any->type_url, want) != 0) return -EPROTOTYPE;
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, any->value.len, any->value.data);
    if (!m) return -EBADMSG;
    *out = m;
    return 0;
}
