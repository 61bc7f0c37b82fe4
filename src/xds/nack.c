/* NACK texts (nack.h). */
#include "xds/nack.h"

#include <stdarg.h>
#include <string.h>

#include "xds/store.h"

void xds_nack_add(struct xds_nack *k, const char *name, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!k->f && !(k->f = open_memstream(&k->text, &k->len))) {
        k->dropped++;
        return;
    }
    if ((size_t)ftell(k->f) + strlen(name) + strlen(why) + 4 > XDS_NACK_MAX) {
        k->dropped++;
        return;
    }
    fprintf(k->f, "%s%s: %s", k->entries ? "; " : "", name, why);
    k->entries++;
}

char *xds_nack_done(struct xds_nack *k)
{
    if (!k->f) return NULL;
    if (k->dropped) fprintf(k->f, "; ... and %zu more rejected", k->dropped);
    fclose(k->f);
    k->f = NULL;
    return k->text;
}
