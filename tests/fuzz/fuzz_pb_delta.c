/* libFuzzer target for decoding a delta xDS response and its resources: pb_message_unpack (a wire-format
 * pass, then protoc-c's generated code) for envoy.service.discovery.v3.DeltaDiscoveryResponse, then
 * pb_any_unpack of every resource whose type URL is Address or Authorization. Seeds:
 * tests/fuzz/corpus/fuzz_pb_delta/ (see tests/fuzz/README.md). Besides memory safety it checks that decoding
 * is stable: what protoc-c re-encodes from an accepted input decodes and re-encodes to the same bytes, and
 * every resource re-encodes from its decoded form to a message that decodes again. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "authorization.pb-c.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "workload.pb-c.h"
#include "xds/pb.h"

/* Re-encodes m into a new buffer; aborts on allocation failure (the fuzzer bounds input sizes). */
static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(*len ? *len : 1);
    if (!buf) abort();
    if (protobuf_c_message_pack(m, buf) != *len) abort();
    return buf;
}

static void check_stable(const ProtobufCMessageDescriptor *d, const ProtobufCMessage *m)
{
    size_t n1, n2;
    uint8_t *b1 = pack(m, &n1);
    ProtobufCMessage *again = NULL;
    if (pb_message_unpack(d, b1, n1, &again) != 0) abort(); /* what we encoded must decode */
    uint8_t *b2 = pack(again, &n2);
    if (n1 != n2 || memcmp(b1, b2, n1) != 0) abort();
    protobuf_c_message_free_unpacked(again, NULL);
    free(b1);
    free(b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ProtobufCMessage *top = NULL;
    if (pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, data, size,
                          &top) != 0)
        return 0;
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp =
        (Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)top;
    check_stable(&envoy__service__discovery__v3__delta_discovery_response__descriptor, &resp->base);
    for (size_t i = 0; i < resp->n_resources; i++) {
        const Google__Protobuf__Any *any = resp->resources[i]->resource;
        if (!any) continue;
        const ProtobufCMessageDescriptor *d = NULL;
        if (strcmp(any->type_url, PB_TYPE_URL_ADDRESS) == 0) d = &istio__workload__address__descriptor;
        if (strcmp(any->type_url, PB_TYPE_URL_AUTHORIZATION) == 0)
            d = &istio__security__authorization__descriptor;
        ProtobufCMessage *m = NULL;
        int rc = pb_any_unpack(any, d ? d : &istio__workload__address__descriptor, &m);
        /* A type URL we do not know must be refused as a type, never decoded. */
        if (!d && rc != -EPROTOTYPE) abort();
        if (rc == 0) {
            check_stable(d, m);
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return 0;
}
