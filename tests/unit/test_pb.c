/* Unit tests for the protobuf glue (src/xds/pb.c): type URLs and Any packing with the generated code. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "authorization.pb-c.h"
#include "workload.pb-c.h"
#include "xds/pb.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_type_urls),
        cmocka_unit_test(test_any_round_trip),
        cmocka_unit_test(test_any_empty_message),
        cmocka_unit_test(test_any_unpack_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
