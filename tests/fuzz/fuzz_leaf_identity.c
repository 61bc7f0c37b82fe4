/* libFuzzer target for the peer identity rule, tls_leaf_identity (src/tls/tls.h), on certificates decoded
 * from the input (DER, as a peer sends them). Built and run by `make fuzz`; the seeds in
 * tests/fuzz/corpus/fuzz_leaf_identity/ are leaves with one URI SAN, two, a DNS SAN only, and a CA:TRUE
 * leaf. The certificate is not verified (no signature or chain check): this is the code that reads the SANs
 * of whatever a peer presents. Besides memory safety it checks the rule's contract:
 *   - an accepted leaf is not a CA, has exactly one URI SAN, and the id returned is that SAN, parses as a
 *     SPIFFE id and lies in the trust domain asked for; the same leaf is refused for another trust domain;
 *   - a refused leaf comes with a non-empty one-line reason and an empty id;
 *   - the result does not depend on whether the caller asks for the id or the reason. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "tls/spiffe.h"
#include "tls/tls.h"

#define TD "cluster.local"

/* The single URI SAN of x copied into out (NUL-terminated), or -1 when x does not have exactly one. */
static int only_uri_san(X509 *x, char *out, size_t n)
{
    int count = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type != GEN_URI) continue;
        const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
        size_t len = (size_t)ASN1_STRING_length(s);
        if (++count == 1 && len < n) {
            memcpy(out, ASN1_STRING_get0_data(s), len);
            out[len] = '\0';
        }
    }
    GENERAL_NAMES_free(gens);
    return count == 1 ? 0 : -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const unsigned char *p = data;
    X509 *x = d2i_X509(NULL, &p, (long)size);
    if (!x) return 0;

    char id[SPIFFE_MAX], why[256], san[SPIFFE_MAX];
    int rc = tls_leaf_identity(x, TD, id, sizeof(id), why, sizeof(why));
    if (rc != -EINVAL && rc < 0) abort(); /* -ENOENT is for a NULL leaf, -ENOSPC cannot happen here */
    if (tls_leaf_identity(x, TD, NULL, 0, NULL, 0) != rc) abort();
    if (rc >= 0) {
        struct spiffe_id sid;
        if ((size_t)rc != strlen(id) || why[0]) abort();
        if (X509_get_extension_flags(x) & EXFLAG_CA) abort();
        if (only_uri_san(x, san, sizeof(san)) < 0 || strcmp(san, id) != 0) abort();
        if (spiffe_parse(id, strlen(id), &sid) != 0 || strcmp(sid.td, TD) != 0) abort();
        if (tls_leaf_identity(x, "other." TD, NULL, 0, why, sizeof(why)) != -EINVAL) abort();
    } else {
        if (id[0] || !why[0] || strchr(why, '\n')) abort();
    }
    X509_free(x);
    return 0;
}
