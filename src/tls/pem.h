/* Small PEM files as the tls layer and its callers read them: a file read whole with a size bound, and the
 * certificates of a PEM text (zmeshd's CA files, the roots a control-plane client trusts). */
#pragma once
#include <stddef.h>
#include <openssl/x509.h>

/* Reads path whole, at most max bytes, into a NUL-terminated malloc'd string (caller frees). Returns 0, or
 * -errno / -EFBIG (longer than max) / -ENOMEM with err = "<path>: <reason>". */
int tls_read_text(const char *path, size_t max, char **out, char *err, size_t errlen);

/* Parses every certificate in text into a new stack *out (caller frees with sk_X509_pop_free); a PEM block
 * that is not a certificate (a key, a CRL) is refused. Returns the count (0 when text holds no PEM block), or
 * -EINVAL / -ENOMEM with err = "<what>: <reason>". */
int tls_pem_certs(const char *what, const char *text, STACK_OF(X509) * *out, char *err, size_t errlen);
