/* libFuzzer target for zmeshd's delta ADS server logic (src/zmeshd/ads.c): request bytes from a client,
 * interleaved with table changes and response pulls, drive one client stream (and its reconnects) against a
 * server with the Address and Authorization types. Besides memory safety it checks the contract of ads.h:
 *   - ads_client_recv returns 0 or a documented error; after an error the client is FAILED with a reason and
 * a gRPC status, and stays so;
 *   - every response serializes to a DeltaDiscoveryResponse that decodes again, for a served type, with a
 * nonce never seen before; each resource is the table's current version of that name with an Any of the type,
 * and no name is both sent and removed, or sent twice;
 *   - a client with nothing to send is not pending; the introspection JSON always builds.
 *
 * Input: a sequence of operations, each one byte (op = byte % 7) and its arguments:
 *   0 request: 2 bytes little-endian length L, then L bytes of DeltaDiscoveryRequest (ads_client_recv)
 *   1 put: 1 byte (bit 0: type, bits 1-3: name n0..n7), 1 byte value      2 remove: 1 byte as for put
 *   3 publish both types    4 drain: pull responses until none (at most 8), checking each
 *   5 reconnect: a new client stream    6 answer the last response of a type: 1 byte (bit 0: type, bit 1:
 * NACK) Seeds in tests/fuzz/corpus/fuzz_ads/ were written by hand in this format with protobuf-encoded
 * requests: a wildcard ztunnel start-up (both types) with ACKs and changes, a reconnect with
 * initial_resource_versions, an on-demand client subscribing names, and a NACK. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "core/log.h"
#include "xds/pb.h"
#include "zmeshd/ads.h"

#define NONCES_MAX 64

static const char *const types[] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION};

struct run {
    struct ads_server *s;
    struct ads_client *c;
    char last_nonce[2][64];
    char seen[NONCES_MAX][64];
    size_t n_seen;
};

static void check_response(struct run *rn, struct ads_response *r)
{
    size_t n = ads_response_size(r);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) abort();
    ads_response_pack(r, buf);
    ProtobufCMessage *m = NULL;
    if (pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, buf, n, &m) !=
        0)
        abort();
    free(buf);
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp = (void *)m;
    int t = strcmp(resp->type_url, types[0]) == 0 ? 0 : strcmp(resp->type_url, types[1]) == 0 ? 1 : -1;
    if (t < 0 || !resp->nonce[0]) abort();
    for (size_t i = 0; i < rn->n_seen; i++)
        if (strcmp(rn->seen[i], resp->nonce) == 0) abort();
    if (strlen(resp->nonce) >= sizeof(rn->seen[0])) abort();
    if (rn->n_seen < NONCES_MAX) strcpy(rn->seen[rn->n_seen++], resp->nonce);
    strcpy(rn->last_nonce[t], resp->nonce);
    for (size_t i = 0; i < resp->n_resources; i++) {
        const Envoy__Service__Discovery__V3__Resource *x = resp->resources[i];
        const char *v = ads_table_version(rn->s, types[t], x->name);
        if (!v || strcmp(v, x->version) != 0) abort();
        if (!x->resource || strcmp(x->resource->type_url, types[t]) != 0) abort();
        for (size_t k = 0; k < i; k++)
            if (strcmp(resp->resources[k]->name, x->name) == 0) abort();
        for (size_t k = 0; k < resp->n_removed_resources; k++)
            if (strcmp(resp->removed_resources[k], x->name) == 0) abort();
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void check_failed(const struct ads_client *c, int rc)
{
    if (rc != -EBADMSG && rc != -EINVAL && rc != -E2BIG && rc != -ENOMEM && rc != -ESTALE) abort();
    if (ads_client_state(c) != ADS_CLIENT_FAILED || !ads_client_error(c)[0] || !ads_client_grpc_status(c))
        abort();
}

static void drain(struct run *rn)
{
    for (int i = 0; i < 8; i++) {
        struct ads_response *r = NULL;
        int rc = ads_client_next_response(rn->c, &r);
        if (rc < 0) {
            if (r) abort();
            check_failed(rn->c, rc);
            return;
        }
        if (!r) {
            /* Nothing to send means nothing pending, or the transport would be woken for nothing forever. */
            if (ads_client_pending(rn->c)) abort();
            return;
        }
        check_response(rn, r);
        ads_response_free(r);
    }
}

static void answer(struct run *rn, uint8_t arg)
{
    int t = arg & 1;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest q =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    node.id = "fuzz";
    q.node = &node;
    q.type_url = (char *)types[t];
    q.response_nonce = rn->last_nonce[t];
    if (arg & 2) {
        st.code = 3;
        st.message = "n1: rejected";
        q.error_detail = &st;
    }
    int rc = ads_client_handle(rn->c, &q);
    if (rc < 0) check_failed(rn->c, rc);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    log_set_level("error"); /* NACK and failure warnings would drown the fuzzer's output */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run rn = {0};
    if (ads_server_new(
            &(struct ads_server_opts){.type_urls = types, .n_types = 2, .control_plane_id = "fuzz"}, &rn.s,
            NULL, 0) < 0)
        return 0;
    if (ads_client_new(rn.s, "fuzz", NULL, NULL, &rn.c) < 0) abort();
    size_t i = 0;
    while (i < size) {
        uint8_t op = data[i++] % 7;
        switch (op) {
        case 0: {
            if (size - i < 2) goto out;
            size_t len = data[i] | (size_t)data[i + 1] << 8;
            i += 2;
            if (len > size - i) len = size - i;
            int rc = ads_client_recv(rn.c, data + i, len);
            i += len;
            if (rc < 0)
                check_failed(rn.c, rc);
            else if (ads_client_state(rn.c) != ADS_CLIENT_ACTIVE)
                abort();
            break;
        }
        case 1:
        case 2: {
            if (size - i < (op == 1 ? 2u : 1u)) goto out;
            uint8_t a = data[i++];
            char name[8];
            snprintf(name, sizeof(name), "n%d", (a >> 1) & 7);
            if (op == 1) {
                uint8_t v = data[i++];
                if (ads_table_put(rn.s, types[a & 1], name, &v, 1, NULL, 0) < 0) abort();
            } else if (ads_table_remove(rn.s, types[a & 1], name) < 0) {
                abort();
            }
            break;
        }
        case 3:
            ads_table_publish(rn.s, types[0]);
            ads_table_publish(rn.s, types[1]);
            break;
        case 4:
            drain(&rn);
            break;
        case 5:
            ads_client_free(rn.c);
            if (ads_client_new(rn.s, "fuzz", NULL, NULL, &rn.c) < 0) abort();
            memset(rn.last_nonce, 0, sizeof(rn.last_nonce));
            break;
        case 6:
            if (i >= size) goto out;
            answer(&rn, data[i++]);
            break;
        }
    }
out:;
    json_t *j = ads_server_status_json(rn.s);
    if (!j) abort();
    char *txt = json_dumps(j, 0);
    if (!txt) abort();
    free(txt);
    json_decref(j);
    ads_server_free(rn.s);
    return 0;
}
