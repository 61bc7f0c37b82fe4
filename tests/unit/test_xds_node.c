/* Unit tests for the xDS Node (src/xds/node.c) and the Struct <-> JSON glue (src/xds/pbstruct.c): the id and
 * metadata Istio's ztunnel sends, checked after a round trip through the wire format. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "xds/node.h"
#include "xds/pb.h"
#include "xds/pbstruct.h"

/* Serializes n and decodes it again, as the control plane would see it. */
static Envoy__Config__Core__V3__Node *wire(const Envoy__Config__Core__V3__Node *n)
{
    size_t len = protobuf_c_message_get_packed_size(&n->base);
    uint8_t *buf = malloc(len ? len : 1);
    assert_non_null(buf);
    protobuf_c_message_pack(&n->base, buf);
    ProtobufCMessage *m = NULL;
    assert_int_equal(pb_message_unpack(&envoy__config__core__v3__node__descriptor, buf, len, &m), 0);
    free(buf);
    return (Envoy__Config__Core__V3__Node *)m;
}

static void test_node_as_istio(void **state)
{
    char *envp[] = {"PATH=/bin",
                    "ISTIO_META_CLUSTER_ID=east",
                    "ISTIO_META_NAME=renamed", /* the proxy metadata map is merged over the base fields */
                    "ISTIO_META_=ignored-empty-key",
                    "ISTIO_METAJSON_LABELS={\"app\":\"ztunnel\",\"rev\":[1,true,null]}",
                    "ISTIO_METAJSON_CLUSTER_ID=\"west\"", /* JSON values are merged last */
                    NULL};
    struct xds_node_info info = {
        .instance_ip = "10.0.0.7", .pod_name = "ztunnel-x", .pod_ns = "istio-system", .node_name = "node-1"};
    Envoy__Config__Core__V3__Node *n = NULL, *w;
    char err[256];
    assert_int_equal(xds_node_new(&info, envp, &n, err, sizeof(err)), 0);
    w = wire(n);
    assert_string_equal(w->id, "ztunnel~10.0.0.7~ztunnel-x.istio-system~istio-system.svc.cluster.local");
    assert_string_equal(pb_struct_get_string(w->metadata, "NAME"), "renamed");
    assert_string_equal(pb_struct_get_string(w->metadata, "NAMESPACE"), "istio-system");
    assert_string_equal(pb_struct_get_string(w->metadata, "INSTANCE_IPS"), "10.0.0.7");
    assert_string_equal(pb_struct_get_string(w->metadata, "NODE_NAME"), "node-1");
    assert_string_equal(pb_struct_get_string(w->metadata, "CLUSTER_ID"), "west");
    assert_null(pb_struct_get_string(w->metadata, ""));
    assert_null(pb_struct_get_string(w->metadata, "PATH"));
    assert_null(pb_struct_get_string(w->metadata, "LABELS")); /* a Struct, not a string */
    json_t *j = pb_struct_to_json(w->metadata);
    assert_non_null(j);
    char *s = json_dumps(json_object_get(j, "LABELS"), JSON_SORT_KEYS | JSON_COMPACT);
    assert_string_equal(s, "{\"app\":\"ztunnel\",\"rev\":[1.0,true,null]}");
    free(s);
    json_decref(j);
    protobuf_c_message_free_unpacked(&w->base, NULL);
    protobuf_c_message_free_unpacked(&n->base, NULL);

    /* Nothing set: Istio's fallbacks. */
    assert_int_equal(xds_node_new(&(struct xds_node_info){0}, NULL, &n, err, sizeof(err)), 0);
    assert_string_equal(n->id, "ztunnel~1.1.1.1~.~.svc.cluster.local");
    assert_string_equal(pb_struct_get_string(n->metadata, "INSTANCE_IPS"), XDS_NODE_DEFAULT_IP);
    protobuf_c_message_free_unpacked(&n->base, NULL);
}

static void test_node_bad_json_refused(void **state)
{
    char *envp[] = {"ISTIO_METAJSON_LABELS={\"app\":", NULL};
    Envoy__Config__Core__V3__Node *n = NULL;
    char err[256];
    assert_int_equal(xds_node_new(&(struct xds_node_info){0}, envp, &n, err, sizeof(err)), -EINVAL);
    assert_null(n);
    assert_non_null(strstr(err, "ISTIO_METAJSON_LABELS: not JSON"));

    /* Nesting is bounded like every protobuf decode. */
    size_t depth = PB_STRUCT_MAX_DEPTH + 5;
    char *deep = malloc(strlen("ISTIO_METAJSON_D=") + 2 * depth + 1);
    strcpy(deep, "ISTIO_METAJSON_D=");
    char *p = deep + strlen(deep);
    for (size_t i = 0; i < depth; i++)
        *p++ = '[';
    for (size_t i = 0; i < depth; i++)
        *p++ = ']';
    *p = 0;
    char *envp2[] = {deep, NULL};
    assert_int_equal(xds_node_new(&(struct xds_node_info){0}, envp2, &n, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ISTIO_METAJSON_D: nested deeper than"));
    free(deep);
}

static void test_struct_set_replaces(void **state)
{
    Google__Protobuf__Struct *st = pb_struct_new();
    assert_int_equal(pb_struct_set_string(st, "ImpersonatedIdentity", "spiffe://a/ns/b/sa/c"), 0);
    assert_int_equal(pb_struct_set_string(st, "ImpersonatedIdentity", "spiffe://a/ns/b/sa/d"), 0);
    assert_int_equal(st->n_fields, 1);
    assert_string_equal(pb_struct_get_string(st, "ImpersonatedIdentity"), "spiffe://a/ns/b/sa/d");
    json_t *num = json_integer(42);
    assert_int_equal(pb_struct_set_json(st, "n", num), 0);
    json_decref(num);
    json_t *j = pb_struct_to_json(st);
    assert_true(json_real_value(json_object_get(j, "n")) == 42.0);
    json_decref(j);
    protobuf_c_message_free_unpacked(&st->base, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_node_as_istio),
        cmocka_unit_test(test_node_bad_json_refused),
        cmocka_unit_test(test_struct_set_replaces),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
