/* libFuzzer target for zmeshd's CSR signing, ca_issuer_sign_csr (src/tls/issuer.h), on arbitrary input as the
 * csr field of a CreateCertificate request. The issuer is a self-signed root made once in a temporary state
 * directory. Seeds in tests/fuzz/corpus/fuzz_csr/ are CSRs made with the openssl CLI (EC P-256 with a URI
 * SAN, RSA 2048, Ed25519, one with a bad signature). The first byte picks the requested TTL (0: default, else
 * byte * 1 h, so some exceed 90 days). Besides memory safety it checks the contract:
 *   - the result is 0, -EINVAL (bad CSR), -ERANGE (TTL above the maximum, and only then) or -ENOMEM; a
 * refusal has a reason and an empty chain;
 *   - an accepted CSR carries a signature that verifies with its own key, and the answer is leaf + root, the
 *     leaf certifying that key for exactly the identity asked (whatever SAN the CSR asked for), not a CA,
 *     valid no longer than asked. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls/issuer.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define ID "spiffe://cluster.local/ns/shop/sa/cart"
static struct ca_issuer *iss;
static struct spiffe_id id;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/zmesh-fuzz-csr-XXXXXX", sub[64], err[256];
    if (!mkdtemp(dir)) abort();
    snprintf(sub, sizeof(sub), "%s/ca", dir);
    if (ca_issuer_open_state(sub, "cluster.local", &iss, err, sizeof(err)) != 0) abort();
    if (spiffe_parse(ID, strlen(ID), &id) != 0) abort();
    /* The key material is in memory now; the files are not needed. */
    char cmd[96];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int64_t ttl = (int64_t)data[0] * 3600;
    struct ca_chain c;
    char err[256] = "";
    int rc = ca_issuer_sign_csr(iss, (const char *)data + 1, size - 1, &id, ttl, &c, err, sizeof(err));
    if (rc == -ENOMEM) return 0;
    if (rc < 0) {
        if (!err[0] || c.pem || c.n) abort();
        if (rc == -ERANGE && ttl <= CA_ISSUER_MAX_TTL_S) abort();
        if (rc != -EINVAL && rc != -ERANGE) abort();
        return 0;
    }
    if (rc != 0 || c.n != 2 || ttl > CA_ISSUER_MAX_TTL_S) abort();
    BIO *b = BIO_new_mem_buf(data + 1, (int)(size - 1));
    X509_REQ *req = b ? PEM_read_bio_X509_REQ(b, NULL, NULL, NULL) : NULL;
    BIO *lb = BIO_new_mem_buf(c.pem[0], -1);
    X509 *leaf = lb ? PEM_read_bio_X509(lb, NULL, NULL, NULL) : NULL;
    if (!req || !leaf) abort();
    EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
    if (!pub || X509_REQ_verify(req, pub) != 1) abort();
    if (EVP_PKEY_eq(X509_get0_pubkey(leaf), pub) != 1) abort();
    char got[SPIFFE_MAX];
    if (tls_leaf_identity(leaf, "cluster.local", got, sizeof(got), NULL, 0) < 0 || strcmp(got, ID) != 0)
        abort();
    time_t limit = time(NULL) + (ttl > 0 ? ttl : CA_ISSUER_DEFAULT_TTL_S) + 5;
    if (X509_cmp_time(X509_get0_notAfter(leaf), &limit) > 0) abort();
    X509_free(leaf);
    X509_REQ_free(req);
    BIO_free(lb);
    BIO_free(b);
    ca_chain_free(&c);
    ERR_clear_error();
    return 0;
}
