/* Unit tests for the protobuf glue (src/xds/pb.c): type URLs and Any packing with the generated code. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <stdlib.h>

#include "authorization.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "workload.pb-c.h"
#include "xds/pb.h"

/* Longest varint, in bytes (64 bits at 7 per byte). */
#define PB_VARINT_BYTES_MAX 10

static void test_type_urls(void **state)
{
    (void)state;
    char buf[PB_TYPE_URL_MAX];
    /* The constants must be what the generated descriptors produce, or a server would send one type URL and
     * unpack another. */
    assert_int_equal(pb_type_url(&istio__workload__address__descriptor, buf, sizeof(buf)),
                     (int)strlen(PB_TYPE_URL_ADDRESS));
    assert_string_equal(buf, PB_TYPE_URL_ADDRESS);
    assert_string_equal(PB_TYPE_URL_ADDRESS, "type.googleapis.com/istio.workload.Address");
    assert_int_equal(pb_type_url(&istio__security__authorization__descriptor, buf, sizeof(buf)),
                     (int)strlen(PB_TYPE_URL_AUTHORIZATION));
    assert_string_equal(buf, "type.googleapis.com/istio.security.Authorization");

    /* Too small: -ENOSPC and an empty string, never a truncated URL. */
    char small[8];
    assert_int_equal(pb_type_url(&istio__workload__address__descriptor, small, sizeof(small)), -ENOSPC);
    assert_string_equal(small, "");
}

static void test_any_round_trip(void **state)
{
    (void)state;
    static const uint8_t ip[4] = {10, 0, 1, 2};
    ProtobufCBinaryData addr = {sizeof(ip), (uint8_t *)ip};
    Istio__Workload__Workload w = ISTIO__WORKLOAD__WORKLOAD__INIT;
    w.uid = "Kubernetes//Pod/default/a";
    w.name = "a";
    w.n_addresses = 1;
    w.addresses = &addr;
    w.tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    a.workload = &w;

    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    assert_int_equal(pb_any_pack(&a.base, &any), 0);
    assert_string_equal(any.type_url, PB_TYPE_URL_ADDRESS);
    assert_int_equal(any.value.len, protobuf_c_message_get_packed_size(&a.base));
    /* Address.workload is field 1, length-delimited: tag byte (1 << 3) | 2. */
    assert_int_equal(any.value.data[0], 0x0a);

    ProtobufCMessage *m = NULL;
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), 0);
    Istio__Workload__Address *back = (Istio__Workload__Address *)m;
    assert_int_equal(back->type_case, ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD);
    assert_string_equal(back->workload->uid, "Kubernetes//Pod/default/a");
    assert_string_equal(back->workload->name, "a");
    assert_int_equal(back->workload->n_addresses, 1);
    assert_memory_equal(back->workload->addresses[0].data, ip, sizeof(ip));
    assert_int_equal(back->workload->tunnel_protocol, ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE);
    protobuf_c_message_free_unpacked(m, NULL);

    /* The same bytes under the other resource type are refused, not misread. */
    m = (ProtobufCMessage *)&any; /* must be reset to NULL on failure */
    assert_int_equal(pb_any_unpack(&any, &istio__security__authorization__descriptor, &m), -EPROTOTYPE);
    assert_null(m);

    pb_any_clear(&any);
    assert_string_equal(any.type_url, "");
    assert_null(any.value.data);
    pb_any_clear(&any); /* twice is harmless */
}

static void test_any_empty_message(void **state)
{
    (void)state;
    /* An Address with nothing set packs to zero bytes; the Any still owns a buffer and unpacks. */
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    assert_int_equal(pb_any_pack(&a.base, &any), 0);
    assert_int_equal(any.value.len, 0);
    assert_non_null(any.value.data);
    ProtobufCMessage *m = NULL;
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), 0);
    assert_int_equal(((Istio__Workload__Address *)m)->type_case, ISTIO__WORKLOAD__ADDRESS__TYPE__NOT_SET);
    protobuf_c_message_free_unpacked(m, NULL);
    pb_any_clear(&any);
}

static void test_any_unpack_rejects(void **state)
{
    (void)state;
    ProtobufCMessage *m = NULL;
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
    /* Empty type URL. */
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), -EPROTOTYPE);
    /* The full name alone, or another prefix: not what Istio sends, so not accepted. */
    any.type_url = "istio.workload.Address";
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), -EPROTOTYPE);
    any.type_url = "example.com/istio.workload.Address";
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), -EPROTOTYPE);
    /* A URL at the length bound is refused without reading past it. */
    char longurl[PB_TYPE_URL_MAX + 1];
    memset(longurl, 'a', PB_TYPE_URL_MAX);
    longurl[PB_TYPE_URL_MAX] = '\0';
    any.type_url = longurl;
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), -EPROTOTYPE);

    /* Right type, bytes that are not a message: field 1 length-delimited claiming 100 bytes, 1 present. */
    static const uint8_t truncated[] = {0x0a, 100, 0x00};
    any.type_url = PB_TYPE_URL_ADDRESS;
    any.value.data = (uint8_t *)truncated;
    any.value.len = sizeof(truncated);
    assert_int_equal(pb_any_unpack(&any, &istio__workload__address__descriptor, &m), -EBADMSG);
    assert_null(m);
}

/* Encodes `levels` nested messages, ListValue at the top, then Value, ListValue ... (ListValue.values = 1,
 * Value.list_value = 6), built from the innermost outwards. Returns a malloc'd buffer and its length. */
static uint8_t *nested_list_values(size_t levels, size_t *len)
{
    const size_t per_level = 1 + PB_VARINT_BYTES_MAX;
    uint8_t *buf = malloc(levels * per_level);
    assert_non_null(buf);
    size_t end = levels * per_level, start = end; /* the payload is buf[start..end) */
    for (size_t lvl = levels - 1; lvl >= 1; lvl--) {
        size_t inner = end - start;
        uint8_t v[PB_VARINT_BYTES_MAX];
        size_t n = 0;
        do {
            v[n++] = (uint8_t)((inner & 0x7f) | (inner > 0x7f ? 0x80 : 0));
            inner >>= 7;
        } while (inner);
        start -= n;
        memcpy(buf + start, v, n);
        /* The message at level lvl (1 = top) holds the one below: ListValue at odd levels, Value at even. */
        buf[--start] = (lvl % 2) ? (1 << 3 | 2) : (6 << 3 | 2);
    }
    memmove(buf, buf + start, end - start);
    *len = end - start;
    return buf;
}

static void test_unpack_depth(void **state)
{
    (void)state;
    ProtobufCMessage *m = NULL;
    size_t len;
    /* The top-level message plus PB_MAX_DEPTH nested ones: accepted, as by Google's parsers. */
    uint8_t *buf = nested_list_values(1 + PB_MAX_DEPTH, &len);
    assert_int_equal(pb_message_unpack(&google__protobuf__list_value__descriptor, buf, len, &m), 0);
    assert_non_null(m);
    protobuf_c_message_free_unpacked(m, NULL);
    free(buf);
    /* One more level: refused before protobuf-c sees it. */
    buf = nested_list_values(2 + PB_MAX_DEPTH, &len);
    assert_int_equal(pb_message_unpack(&google__protobuf__list_value__descriptor, buf, len, &m), -ELOOP);
    assert_null(m);
    free(buf);
    /* 200 000 levels (about 1 MiB), which protobuf-c alone decodes by recursion until the stack runs out. */
    buf = nested_list_values(200000, &len);
    assert_int_equal(pb_message_unpack(&google__protobuf__list_value__descriptor, buf, len, &m), -ELOOP);
    free(buf);
}

static void test_unpack_wire_format(void **state)
{
    (void)state;
    static const struct {
        const char *what;
        uint8_t bytes[16];
        size_t len;
    } bad[] = {
        {"field number 0", {0x02, 0x00}, 2},
        /* The same tag written in two bytes: protobuf-c 1.4 takes it as an unknown field and re-encodes it as
         * the one-byte form, which it then refuses, so a message would not survive its own re-encoding. */
        {"field number 0, overlong tag", {0x82, 0x00, 0x00}, 3},
        {"group start (wire type 3)", {0x0b}, 1},
        {"group end (wire type 4)", {0x0c}, 1},
        {"wire type 6", {0x0e, 0x00}, 2},
        {"wire type 7", {0x0f, 0x00}, 2},
        {"truncated varint value", {0x08, 0x80}, 2},
        {"11-byte varint", {0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}, 12},
        {"truncated tag", {0x80}, 1},
        {"length beyond the end", {0x0a, 0x05, 'a'}, 3},
        {"truncated fixed64", {0x09, 1, 2, 3}, 4},
        {"truncated fixed32", {0x0d, 1, 2}, 3},
        {"field number above 2^29-1", {0xf8, 0xff, 0xff, 0xff, 0x7f, 0x00}, 6},
        /* Inside a sub-message (Workload at Address.workload = 1): the scan descends. */
        {"field number 0 in a sub-message", {0x0a, 0x02, 0x02, 0x00}, 4},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ProtobufCMessage *m = (ProtobufCMessage *)&bad[i];
        int rc = pb_message_unpack(&istio__workload__address__descriptor, bad[i].bytes, bad[i].len, &m);
        if (rc != -EBADMSG) fail_msg("%s: got %d, want -EBADMSG", bad[i].what, rc);
        assert_null(m);
    }

    /* Unknown fields of every wire type (field 99) are fine and kept for re-encoding. */
    static const uint8_t unknown[] = {
        0x98, 0x06, 0x2a,                          /* 99 varint 42 */
        0x99, 0x06, 1,    2,   3,   4, 5, 6, 7, 8, /* 99 fixed64 */
        0x9a, 0x06, 0x02, 'h', 'i',                /* 99 length-delimited */
        0x9d, 0x06, 1,    2,   3,   4,             /* 99 fixed32 */
    };
    ProtobufCMessage *m = NULL;
    assert_int_equal(pb_message_unpack(&istio__workload__address__descriptor, unknown, sizeof(unknown), &m),
                     0);
    assert_int_equal(m->n_unknown_fields, 4);
    assert_int_equal(protobuf_c_message_get_packed_size(m), sizeof(unknown));
    protobuf_c_message_free_unpacked(m, NULL);
    /* Empty input is the empty message. */
    assert_int_equal(pb_message_unpack(&istio__workload__address__descriptor, NULL, 0, &m), 0);
    protobuf_c_message_free_unpacked(m, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_urls),         cmocka_unit_test(test_any_round_trip),
        cmocka_unit_test(test_any_empty_message), cmocka_unit_test(test_any_unpack_rejects),
        cmocka_unit_test(test_unpack_depth),      cmocka_unit_test(test_unpack_wire_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
