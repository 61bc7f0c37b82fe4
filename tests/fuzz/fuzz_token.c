/* libFuzzer target for zmeshd's bearer-token verification, token_verify (src/tls/token.h). The first input
 * byte picks the path:
 *   0     the rest is a token, verified as it arrived (header, base64url, signature, then claims); the seeds
 *         in tests/fuzz/corpus/fuzz_token/ are tokens signed by the fixed test key below, so mutations start
 *         from tokens that verify;
 *   other the rest is a claims payload (JSON), signed here with the test key by libjwt and then verified,
 *         so the claim checks see arbitrary JSON behind a valid signature.
 * Time is fixed (FUZZ_NOW) so a seed behaves the same on every run. Besides memory safety it checks the
 * contract: the result is 0 or -EACCES (never another code but -ENOMEM); a refusal has a reason and leaves
 * the caller zeroed; an accepted token names a namespace and service account that form a SPIFFE id, agrees
 * with its own sub, and has not expired beyond the leeway. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jwt.h>

#include "tls/spiffe.h"
#include "tls/token.h"

#define FUZZ_NOW 1800000000L
/* A P-256 key made for this target only (it signs nothing else). */
static const char test_key[] = "-----BEGIN PRIVATE KEY-----\n"
                               "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqis7FDIDw0rZtduk\n"
                               "/7U3ymjMU6xJjvfWpy+wMxosjrehRANCAARlbL5WIgAYm7B2crp7HAZ1RNDjGdKQ\n"
                               "0c/cepKBKcb6QHxnvFLGaILPKu+eQQX9p5PT8sVL/jCS00OqD9yDXV61\n"
                               "-----END PRIVATE KEY-----\n";
static struct token_key *key;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char dir[] = "/tmp/zmesh-fuzz-token-XXXXXX", path[64], err[256];
    if (!mkdtemp(dir)) abort();
    snprintf(path, sizeof(path), "%s/key.pem", dir);
    FILE *f = fopen(path, "w");
    if (!f || fputs(test_key, f) < 0 || fclose(f) != 0 || chmod(path, 0600) != 0) abort();
    if (token_key_open(path, &key, err, sizeof(err)) != 0) abort();
    unlink(path);
    rmdir(dir);
    return 0;
}

static void check(const char *tok, size_t len)
{
    struct token_caller c;
    struct spiffe_id id;
    char err[256] = "";
    int rc = token_verify(key, NULL, NULL, tok, len, FUZZ_NOW, &c, err, sizeof(err));
    if (rc == -ENOMEM) return;
    if (rc == -EACCES) {
        if (!err[0] || c.ns[0] || c.sa[0] || c.node[0] || c.exp) abort();
        return;
    }
    if (rc != 0) abort();
    if (spiffe_set(&id, NULL, c.ns, c.sa) != 0) abort();
    if (c.exp + TOKEN_LEEWAY_S < FUZZ_NOW) abort();
    if (strchr(c.ns, ':') || strchr(c.sa, ':')) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > TOKEN_MAX_LEN) return 0;
    if (data[0] == 0) {
        check((const char *)data + 1, size - 1);
        return 0;
    }
    /* Sign the payload as given: libjwt takes a NUL-terminated JSON object. */
    char *json = strndup((const char *)data + 1, size - 1);
    jwt_t *j = NULL;
    if (json && jwt_new(&j) == 0 && jwt_add_grants_json(j, json) == 0 &&
        jwt_set_alg(j, JWT_ALG_ES256, (const unsigned char *)test_key, (int)strlen(test_key)) == 0) {
        char *tok = jwt_encode_str(j);
        if (tok) check(tok, strlen(tok));
        free(tok);
    }
    jwt_free(j);
    free(json);
    return 0;
}
