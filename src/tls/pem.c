/* PEM files read whole and PEM certificate lists (see pem.h). */
#include "tls/pem.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "core/err.h"
#include "tls/tls.h"

int tls_read_text(const char *path, size_t max, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t n;
    int rc = -EIO;

    *out = NULL;
    if (!f) {
        rc = -errno;
        err_setf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!(buf = malloc(max + 1))) {
        rc = -ENOMEM;
        err_setf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    n = fread(buf, 1, max + 1, f);
    if (ferror(f) || n > max) {
        rc = ferror(f) ? -EIO : -EFBIG;
        if (ferror(f))
            err_setf(err, errlen, "%s: read error", path);
        else
            err_setf(err, errlen, "%s: larger than %zu bytes", path, max);
        goto out;
    }
    buf[n] = '\0';
    *out = buf;
    buf = NULL;
    rc = 0;
out:
    if (f) fclose(f);
    free(buf);
    return rc;
}

int tls_pem_certs(const char *path, const char *text, STACK_OF(X509) * *out, char *err, size_t errlen)
{
    BIO *b = BIO_new_mem_buf(text, -1);
    STACK_OF(X509_INFO) *infos = NULL;
    char ebuf[256];
    int rc = -EINVAL;

    *out = sk_X509_new_null();
    if (!b || !*out) {
        rc = -ENOMEM;
        err_setf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    if (!(infos = PEM_X509_INFO_read_bio(b, NULL, NULL, (void *)""))) {
        err_setf(err, errlen, "%s: not PEM: %s", path,
                 ERR_peek_error() ? tls_errstr(ebuf, sizeof(ebuf)) : "unreadable");
        goto out;
    }
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *xi = sk_X509_INFO_value(infos, i);
        if (!xi->x509 || xi->x_pkey || xi->crl) {
            err_setf(err, errlen, "%s: PEM block %d is not a certificate", path, i + 1);
            goto out;
        }
        if (!sk_X509_push(*out, xi->x509)) {
            rc = -ENOMEM;
            err_setf(err, errlen, "%s: out of memory", path);
            goto out;
        }
        xi->x509 = NULL;
    }
    rc = sk_X509_num(*out);
out:
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(b);
    if (rc < 0) {
        sk_X509_pop_free(*out, X509_free);
        *out = NULL;
    }
    ERR_clear_error();
    return rc;
}
