/* The waypoint's streaming HTTP/1.1 codec (codec.h): llhttp does the parsing; this file collects the head
 * that llhttp hands over in pieces into one bounded buffer, decides the body's framing, applies the RFC 9112
 * rules llhttp leaves to its user (version, transfer codings, obs-fold, interim responses, HEAD and CONNECT
 * answers), turns llhttp's pauses into one consumption count for the caller, and maps every failure to the
 * status a server answers. No lenient flag of llhttp is ever set and llhttp is compiled in its strict mode
 * (LLHTTP_STRICT_MODE=1, Makefile): its strictness is the smuggling defence.
 *
 * llhttp calls back with spans that end where its input ends, so one name or value may arrive in several
 * calls across feeds; the *_complete callbacks say where each ends. Offsets, not pointers, are kept while
 * collecting because the buffer grows (up to max_head_bytes); the pointers of struct http1_head are made
 * once, in on_headers_complete. */
#include "http1/codec.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <llhttp.h>

#include "core/log.h"

#define H1C_BUF_INITIAL 1024 /* a head buffer's first size; it doubles up to max_head_bytes */
#define H1C_FLD_INITIAL 16   /* header slots allocated first; doubled up to max_headers */
#define H1C_CHUNK_EXT_MAX                                                                                    \
    4096 /* bytes of chunk extensions per chunk (ignored, RFC 9112 §7.1.1, but bounded) */

#define H1C_LOG "http1::codec"

/* One collected field: offsets into the parser's buffer. */
struct h1c_field {
    size_t name_off, name_len, value_off, value_len;
};

struct http1_parser {
    llhttp_t ll;
    enum http1_kind kind;
    struct http1_parser_limits lim;
    struct http1_parser_ops ops;
    void *ud;
    enum http1_parser_state st;
    enum http1_parser_state st_resume; /* the state a pause inside a message returns to */
    /* the head (or the trailers) being collected */
    char *buf;
    size_t len, cap;
    struct h1c_field *fld;
    struct http1_hdr *hdrs; /* same capacity as fld; filled for on_head and on_trailers */
    size_t nfld, fld_cap;
    bool name_open, value_open;
    const char *cur_start, *cur_end; /* the bytes of the feed in progress */
    const char *val_next;            /* where the value's next piece must start (obs-fold detection) */
    bool val_at_end; /* the value's last piece ended its feed: the next starts the next feed */
    size_t method_len, target_off, target_len, reason_off, reason_len;
    size_t raw_head;  /* bytes fed while inside the head, whitespace llhttp skips included */
    bool in_trailers; /* the last chunk was seen: fields now are trailers */
    size_t chunk_ext; /* bytes of the current chunk's extensions */
    /* what the caller said about the next final response */
    bool to_head, to_connect;
    /* the current message */
    bool interim, upgrade;
    uint64_t body_seen;
    uint64_t messages;
    /* the error */
    int err_status;
    const char *err_reason;
};

/* ---- names ---- */

const char *http1_framing_to_str(enum http1_framing f)
{
    switch (f) {
    case HTTP1_BODY_NONE:
        return "none";
    case HTTP1_BODY_LENGTH:
        return "content-length";
    case HTTP1_BODY_CHUNKED:
        return "chunked";
    case HTTP1_BODY_UNTIL_EOF:
        return "until-eof";
    }
    return "unknown";
}

const char *http1_parser_state_to_str(enum http1_parser_state s)
{
    switch (s) {
    case HTTP1_P_IDLE:
        return "idle";
    case HTTP1_P_HEAD:
        return "head";
    case HTTP1_P_BODY:
        return "body";
    case HTTP1_P_PAUSED:
        return "paused";
    case HTTP1_P_DONE:
        return "done";
    case HTTP1_P_UPGRADED:
        return "upgraded";
    case HTTP1_P_CLOSED:
        return "closed";
    case HTTP1_P_ERROR:
        return "error";
    }
    return "unknown";
}

bool http1_name_is(const char *name, size_t len, const char *lower)
{
    size_t ll = strlen(lower);
    if (len != ll) return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != lower[i]) return false;
    }
    return true;
}

static bool h1c_token(const char *s, size_t n);
static bool h1c_text(const char *s, size_t n);

static bool h1c_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Calls fn on each element of a comma-separated list (RFC 9110 §5.6.1), trimmed, empty ones skipped; stops
 * when fn returns true and returns true then. */
static bool h1c_list_any(const char *v, size_t n, bool (*fn)(const char *e, size_t len, const void *arg),
                         const void *arg)
{
    size_t i = 0;
    while (i < n) {
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (s < e && h1c_ows(v[s]))
            s++;
        while (e > s && h1c_ows(v[e - 1]))
            e--;
        if (e > s && fn(v + s, e - s, arg)) return true;
        i++; /* past the comma */
    }
    return false;
}

/* ---- the parser: errors ---- */

static int h1c_fail(struct http1_parser *p, int status, const char *reason)
{
    if (!p->err_status) {
        p->err_status = status;
        p->err_reason = reason;
    }
    llhttp_set_error_reason(&p->ll, reason);
    return HPE_USER;
}

void http1_parser_set_error(struct http1_parser *p, int status, const char *reason)
{
    p->err_status = status;
    p->err_reason = reason;
}

/* The status for an llhttp error that no callback of ours explained. */
static int h1c_status_of(const llhttp_t *ll, llhttp_errno_t e)
{
    const char *why = llhttp_get_error_reason(ll);
    switch (e) {
    case HPE_INVALID_VERSION:
        /* llhttp uses this code for a version it does not know (HTTP/3.0: 505, RFC 9110 §15.6.6) and for a
         * malformed version field ("HTTP/1.x", "HTTP/1.1 \r\n": 400); only its reason tells them apart. */
        return why && !strcmp(why, "Invalid HTTP version") ? 505 : 400;
    case HPE_PAUSED_H2_UPGRADE: /* "PRI * HTTP/2.0": HTTP/2 prior knowledge reached an HTTP/1 parser */
        return 505;
    default:
        return 400;
    }
}

int http1_parser_error(const struct http1_parser *p, const char **reason)
{
    if (reason) *reason = p->st == HTTP1_P_ERROR ? p->err_reason : NULL;
    return p->st == HTTP1_P_ERROR ? p->err_status : 0;
}

/* ---- the parser: collecting the head ---- */

/* Appends a span to the head buffer; a head past max_head_bytes fails with 431. */
static int h1c_append(struct http1_parser *p, const char *at, size_t n)
{
    if (n > p->lim.max_head_bytes - p->len)
        return h1c_fail(p, 431, p->in_trailers ? "trailer fields too large" : "header fields too large");
    if (p->len + n > p->cap) {
        size_t ncap = p->cap ? p->cap : H1C_BUF_INITIAL;
        while (ncap < p->len + n)
            ncap *= 2;
        if (ncap > p->lim.max_head_bytes) ncap = p->lim.max_head_bytes;
        char *nb = realloc(p->buf, ncap);
        if (!nb) return h1c_fail(p, 503, "out of memory");
        p->buf = nb;
        p->cap = ncap;
    }
    memcpy(p->buf + p->len, at, n);
    p->len += n;
    return 0;
}

/* Forgets the collected head (or trailers). */
static void h1c_clear(struct http1_parser *p)
{
    p->len = 0;
    p->nfld = 0;
    p->name_open = p->value_open = false;
    p->method_len = p->target_off = p->target_len = p->reason_off = p->reason_len = 0;
}

static struct http1_parser *h1c_of(llhttp_t *ll)
{
    return ll->data;
}

static int h1c_on_message_begin(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    h1c_clear(p);
    p->in_trailers = false;
    p->interim = p->upgrade = false;
    p->raw_head = 0;
    p->body_seen = 0;
    p->chunk_ext = 0;
    p->st = HTTP1_P_HEAD;
    return 0;
}

static int h1c_on_method(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    p->method_len += n; /* the method is the first thing collected: it starts at offset 0 */
    return h1c_append(p, at, n);
}

static int h1c_on_url(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    if (!p->target_len) p->target_off = p->len;
    if (n > p->lim.max_target - p->target_len) return h1c_fail(p, 414, "request-target too long");
    p->target_len += n;
    return h1c_append(p, at, n);
}

static int h1c_on_status(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    if (!p->reason_len) p->reason_off = p->len;
    p->reason_len += n;
    return h1c_append(p, at, n);
}

static int h1c_on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    if (!p->name_open) {
        size_t max = p->lim.max_headers;
        if (p->nfld >= max)
            return h1c_fail(p, 431, p->in_trailers ? "too many trailer fields" : "too many header fields");
        if (p->nfld == p->fld_cap) {
            size_t ncap = p->fld_cap ? p->fld_cap * 2 : H1C_FLD_INITIAL;
            if (ncap > max) ncap = max;
            struct h1c_field *nf = realloc(p->fld, ncap * sizeof(*nf));
            if (!nf) return h1c_fail(p, 503, "out of memory");
            p->fld = nf;
            struct http1_hdr *nh = realloc(p->hdrs, ncap * sizeof(*nh));
            if (!nh) return h1c_fail(p, 503, "out of memory");
            p->hdrs = nh;
            p->fld_cap = ncap;
        }
        p->fld[p->nfld++] = (struct h1c_field){.name_off = p->len};
        p->name_open = true;
    }
    p->fld[p->nfld - 1].name_len += n;
    return h1c_append(p, at, n);
}

static int h1c_on_header_field_complete(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    struct h1c_field *f = &p->fld[p->nfld - 1];
    p->name_open = false;
    /* RFC 9112 §5.1: a server must reject whitespace between a field name and its colon with 400 (two hops
     * could disagree on the field), a proxy must remove it from a response. Strict llhttp refuses it already;
     * its loose build takes the whitespace into the name, so this holds whichever build is linked. */
    if (p->kind == HTTP1_RESPONSE)
        while (f->name_len && h1c_ows(p->buf[f->name_off + f->name_len - 1]))
            f->name_len--;
    if (!h1c_token(p->buf + f->name_off, f->name_len))
        return h1c_fail(p, 400, "whitespace or invalid character in a header field name");
    /* An empty value gets no on_header_value call; the value starts here either way. */
    f->value_off = p->len;
    return 0;
}

static int h1c_on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    /* A value continues where its last piece ended, or at the start of the next feed when that piece ended
     * its feed. Anything else is obs-fold: strict llhttp 8.1 accepts a line that starts with whitespace as a
     * continuation and hands it over as another piece, without the line break. RFC 9112 §5.2 lets a server
     * reject it with 400, which a proxy should: unfolded or folded, the next hop may read it otherwise. */
    if (p->value_open && at != (p->val_at_end ? p->cur_start : p->val_next))
        return h1c_fail(p, 400, "obsolete line folding in a header field");
    p->val_next = at + n;
    p->val_at_end = at + n == p->cur_end;
    p->value_open = true;
    p->fld[p->nfld - 1].value_len += n;
    return h1c_append(p, at, n);
}

static int h1c_on_header_value_complete(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    struct h1c_field *f = &p->fld[p->nfld - 1];
    p->value_open = false;
    const char *v = p->buf + f->value_off;
    /* The loose build of llhttp hands over obs-fold with its line break inside the value. */
    if (memchr(v, '\r', f->value_len) || memchr(v, '\n', f->value_len))
        return h1c_fail(p, 400, "obsolete line folding in a header field");
    while (f->value_len && h1c_ows(v[f->value_len - 1]))
        f->value_len--; /* trailing OWS is not the value */
    return 0;
}

/* Fills p->hdrs from the collected fields. */
static void h1c_make_hdrs(struct http1_parser *p)
{
    for (size_t i = 0; i < p->nfld; i++)
        p->hdrs[i] = (struct http1_hdr){.name = p->buf + p->fld[i].name_off,
                                        .name_len = p->fld[i].name_len,
                                        .value = p->buf + p->fld[i].value_off,
                                        .value_len = p->fld[i].value_len};
}

struct h1c_te {
    int chunked, other;
};

static bool h1c_te_elem(const char *e, size_t len, const void *arg)
{
    struct h1c_te *te = (struct h1c_te *)arg;
    /* A coding may carry parameters ("gzip;q=1" is not a TE value, but parameters are allowed): the name
     * is what precedes ';'. */
    size_t nl = 0;
    while (nl < len && e[nl] != ';' && !h1c_ows(e[nl]))
        nl++;
    if (http1_name_is(e, nl, "chunked") && nl == len)
        te->chunked++;
    else
        te->other++;
    return false;
}

static bool h1c_is_100_continue(const char *e, size_t len, const void *arg)
{
    (void)arg;
    return http1_name_is(e, len, "100-continue");
}

/* Decides framing, applies RFC 9112's rules, and hands the head to on_head. Returns llhttp's codes: 0,
 * HPE_PAUSED, or an error. Skipping the body is done by setting F_SKIPBODY ourselves, which is what llhttp's
 * own "return 1" does: a paused head may need no body too, and llhttp has no return value for both. */
static int h1c_on_headers_complete(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    struct http1_head h = {0};
    int major = llhttp_get_http_major(ll), minor = llhttp_get_http_minor(ll);
    if (major != 1 || (minor != 0 && minor != 1)) return h1c_fail(p, 505, "HTTP version not supported");
    h1c_make_hdrs(p);
    h.version_minor = minor;
    h.headers = p->hdrs;
    h.n_headers = p->nfld;

    struct h1c_te te = {0};
    for (size_t i = 0; i < p->nfld; i++) {
        const struct http1_hdr *f = &p->hdrs[i];
        if (http1_name_is(f->name, f->name_len, "transfer-encoding"))
            h1c_list_any(f->value, f->value_len, h1c_te_elem, &te);
        else if (p->kind == HTTP1_REQUEST && minor == 1 && http1_name_is(f->name, f->name_len, "expect") &&
                 h1c_list_any(f->value, f->value_len, h1c_is_100_continue, NULL))
            h.expect_continue = true;
    }
    if (ll->flags & F_TRANSFER_ENCODING) {
        /* RFC 9112 §6.3: a request whose final coding is not chunked has no reliable length (400); chunked
         * applied twice is malformed (§6.1). Any other coding before it is one we do not implement (§6.1:
         * 501, as Envoy answers for every Transfer-Encoding but "chunked"); for a response, which RFC 9112
         * would read until EOF, forwarding coded bytes without their Transfer-Encoding would corrupt them. */
        if (!(ll->flags & F_CHUNKED)) {
            if (p->kind == HTTP1_REQUEST) return h1c_fail(p, 400, "final transfer coding is not chunked");
            return h1c_fail(p, 501, "unsupported transfer coding");
        }
        if (te.chunked > 1) return h1c_fail(p, 400, "chunked applied more than once");
        /* RFC 9110 §9.3.6: CONNECT has no content; Envoy answers a Transfer-Encoding on it 501 too. */
        if (p->kind == HTTP1_REQUEST && ll->method == HTTP_CONNECT)
            return h1c_fail(p, 501, "transfer coding on CONNECT");
        if (te.other) return h1c_fail(p, 501, "unsupported transfer coding");
    }

    if (p->kind == HTTP1_REQUEST) {
        /* RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with more than one, gets 400; with
         * two, the route and the upstream could pick different ones. */
        size_t hosts = 0;
        for (size_t i = 0; i < p->nfld; i++)
            if (http1_name_is(p->hdrs[i].name, p->hdrs[i].name_len, "host")) hosts++;
        if (hosts > 1) return h1c_fail(p, 400, "more than one Host header");
        if (!hosts && minor == 1) return h1c_fail(p, 400, "missing Host header");
    }

    bool no_body = false;
    if (p->kind == HTTP1_REQUEST) {
        h.method = p->buf;
        h.method_len = p->method_len;
        h.target = p->buf + p->target_off;
        h.target_len = p->target_len;
        if (ll->method == HTTP_CONNECT) no_body = true; /* llhttp treats the rest as the tunnel */
    } else {
        h.status = llhttp_get_status_code(ll);
        if (h.status < 100 || h.status > 599) return h1c_fail(p, 400, "invalid status code");
        h.reason = p->buf + p->reason_off;
        h.reason_len = p->reason_len;
        /* llhttp takes any byte but CR and LF into the reason; RFC 9112 §4 allows no control but HTAB, and a
         * NUL or other control forwarded could end or split the line at the next hop. */
        if (!h1c_text(h.reason, h.reason_len))
            return h1c_fail(p, 400, "invalid character in the reason phrase");
        /* RFC 9112 §6.3 items 1-2: whatever the headers say, these have no body. */
        if (h.status < 200 || h.status == 204 || h.status == 304) no_body = true;
        if (h.status >= 200) {
            if (p->to_head) no_body = true;
            if (p->to_connect && h.status < 300) {
                no_body = true;
                ll->upgrade = 1; /* llhttp then ends the message and returns HPE_PAUSED_UPGRADE */
            }
        }
        p->interim = h.status < 200 && !(h.status == 101 && ll->upgrade);
        h.interim = p->interim;
    }
    h.has_content_length = (ll->flags & F_CONTENT_LENGTH) != 0;
    h.content_length = h.has_content_length ? ll->content_length : 0;
    if (no_body) {
        ll->flags |= F_SKIPBODY;
        h.framing = HTTP1_BODY_NONE;
    } else if (ll->flags & F_CHUNKED) {
        h.framing = HTTP1_BODY_CHUNKED;
    } else if (h.has_content_length) {
        h.framing = ll->content_length ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    } else {
        h.framing = llhttp_message_needs_eof(ll) ? HTTP1_BODY_UNTIL_EOF : HTTP1_BODY_NONE;
    }
    if (h.framing == HTTP1_BODY_LENGTH && p->lim.max_body && ll->content_length > p->lim.max_body)
        return h1c_fail(p, 413, "body too large");
    h.upgrade = ll->upgrade != 0;
    p->upgrade = h.upgrade;
    h.keep_alive = llhttp_should_keep_alive(ll) != 0;

    p->st = HTTP1_P_BODY;
    int r = p->ops.on_head(p->ud, &h);
    if (r < 0)
        return h1c_fail(p, p->err_status ? p->err_status : 400,
                        p->err_reason ? p->err_reason : "refused by on_head");
    if (r == HTTP1_PAUSE) {
        p->st_resume = HTTP1_P_BODY;
        p->st = HTTP1_P_PAUSED;
        return HPE_PAUSED;
    }
    return 0;
}

/* ---- the parser: body, trailers, end ---- */

static int h1c_on_body(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    /* llhttp closes a span open at the end of its input, which after a resume can be empty. */
    if (!n) return 0;
    if (p->lim.max_body && n > p->lim.max_body - p->body_seen) return h1c_fail(p, 413, "body too large");
    p->body_seen += n;
    int r = p->ops.on_body ? p->ops.on_body(p->ud, (const uint8_t *)at, n) : 0;
    if (r < 0)
        return h1c_fail(p, p->err_status ? p->err_status : 400,
                        p->err_reason ? p->err_reason : "refused by on_body");
    if (r == HTTP1_PAUSE) {
        p->st_resume = HTTP1_P_BODY;
        p->st = HTTP1_P_PAUSED;
        return HPE_PAUSED;
    }
    return 0;
}

/* Chunk extensions are dropped (RFC 9112 §7.1.1: a recipient ignores those it does not understand, and we
 * understand none) but counted, so a chunk-size line cannot go on forever. */
static int h1c_on_chunk_ext(llhttp_t *ll, const char *at, size_t n)
{
    struct http1_parser *p = h1c_of(ll);
    (void)at;
    if (n > H1C_CHUNK_EXT_MAX - p->chunk_ext) return h1c_fail(p, 400, "chunk extensions too long");
    p->chunk_ext += n;
    return 0;
}

static int h1c_on_chunk_header(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    p->chunk_ext = 0;
    if (ll->content_length == 0) {
        /* The last chunk: what follows are trailer fields, collected in the same buffer and bounds as the
         * head (which on_head has had, and which is not valid any more). */
        h1c_clear(p);
        p->in_trailers = true;
        p->raw_head = 0;
    }
    return 0;
}

static int h1c_on_message_complete(llhttp_t *ll)
{
    struct http1_parser *p = h1c_of(ll);
    if (p->in_trailers && p->nfld) {
        h1c_make_hdrs(p);
        if (p->ops.on_trailers) {
            int r = p->ops.on_trailers(p->ud, p->hdrs, p->nfld);
            if (r < 0)
                return h1c_fail(p, p->err_status ? p->err_status : 400,
                                p->err_reason ? p->err_reason : "refused by on_trailers");
        } else {
            LOG_D(H1C_LOG, "dropped %zu trailer fields (no on_trailers)", p->nfld);
        }
    }
    if (p->interim) {
        /* A 1xx other than 101 is not the answer: the final response follows on the same parser, and what
         * was said about it (HEAD, CONNECT) still holds. */
        p->st = HTTP1_P_IDLE;
        return 0;
    }
    p->to_head = p->to_connect = false;
    p->messages++;
    int r = p->ops.on_complete(p->ud);
    if (r < 0)
        return h1c_fail(p, p->err_status ? p->err_status : 400,
                        p->err_reason ? p->err_reason : "refused by on_complete");
    if (p->upgrade) {
        /* llhttp pauses by itself (HPE_PAUSED_UPGRADE) once this returns. */
        p->st = HTTP1_P_UPGRADED;
        return 0;
    }
    p->st = HTTP1_P_DONE;
    return HPE_PAUSED;
}

static const llhttp_settings_t h1c_settings = {
    .on_message_begin = h1c_on_message_begin,
    .on_method = h1c_on_method,
    .on_url = h1c_on_url,
    .on_status = h1c_on_status,
    .on_header_field = h1c_on_header_field,
    .on_header_field_complete = h1c_on_header_field_complete,
    .on_header_value = h1c_on_header_value,
    .on_header_value_complete = h1c_on_header_value_complete,
    .on_headers_complete = h1c_on_headers_complete,
    .on_body = h1c_on_body,
    .on_chunk_extension_name = h1c_on_chunk_ext,
    .on_chunk_extension_value = h1c_on_chunk_ext,
    .on_chunk_header = h1c_on_chunk_header,
    .on_message_complete = h1c_on_message_complete,
};

/* ---- the parser: the public half ---- */

struct http1_parser *http1_parser_new(enum http1_kind k, const struct http1_parser_limits *lim,
                                      const struct http1_parser_ops *ops, void *ud)
{
    if (!ops || !ops->on_head || !ops->on_complete) return NULL;
    struct http1_parser *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->kind = k;
    if (lim) p->lim = *lim;
    if (!p->lim.max_head_bytes) p->lim.max_head_bytes = HTTP1_MAX_HEAD_BYTES;
    if (!p->lim.max_headers) p->lim.max_headers = HTTP1_MAX_HEADERS;
    if (!p->lim.max_target) p->lim.max_target = HTTP1_MAX_TARGET;
    p->ops = *ops;
    p->ud = ud;
    /* Allocated up front so that a head with nothing collected still has valid (empty) pointers. */
    p->cap = H1C_BUF_INITIAL < p->lim.max_head_bytes ? H1C_BUF_INITIAL : p->lim.max_head_bytes;
    if (!(p->buf = malloc(p->cap))) {
        free(p);
        return NULL;
    }
    llhttp_init(&p->ll, k == HTTP1_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE, &h1c_settings);
    p->ll.data = p;
    p->st = HTTP1_P_IDLE;
    return p;
}

void http1_parser_free(struct http1_parser *p)
{
    if (!p) return;
    free(p->buf);
    free(p->fld);
    free(p->hdrs);
    free(p);
}

static ssize_t h1c_error(struct http1_parser *p, llhttp_errno_t e)
{
    p->st = HTTP1_P_ERROR;
    if (!p->err_status) {
        p->err_status = h1c_status_of(&p->ll, e);
        p->err_reason =
            e == HPE_PAUSED_H2_UPGRADE ? "HTTP/2 connection preface" : llhttp_get_error_reason(&p->ll);
        if (!p->err_reason) p->err_reason = llhttp_errno_name(e);
    }
    return -EPROTO;
}

ssize_t http1_parser_feed(struct http1_parser *p, const uint8_t *data, size_t n)
{
    static const uint8_t empty[1];
    switch (p->st) {
    case HTTP1_P_ERROR:
        return -EPROTO;
    case HTTP1_P_PAUSED:
    case HTTP1_P_DONE:
    case HTTP1_P_UPGRADED:
    case HTTP1_P_CLOSED:
        return 0;
    default:
        break;
    }
    /* n == 0 still runs llhttp: after a resume, a message whose head or last body bytes were paused on may
     * complete without another byte. */
    if (!data) data = empty;
    p->cur_start = (const char *)data;
    p->cur_end = (const char *)data + n;
    llhttp_errno_t e = llhttp_execute(&p->ll, (const char *)data, n);
    size_t used = n;
    switch (e) {
    case HPE_OK:
        break;
    case HPE_PAUSED:
    case HPE_PAUSED_UPGRADE:
        used = (size_t)((const uint8_t *)llhttp_get_error_pos(&p->ll) - data);
        if (e == HPE_PAUSED_UPGRADE) p->st = HTTP1_P_UPGRADED;
        break;
    default:
        return h1c_error(p, e);
    }
    if (p->st == HTTP1_P_HEAD || (p->in_trailers && p->st == HTTP1_P_BODY)) {
        /* llhttp skips some whitespace without a callback; counting the raw bytes of an unfinished head (or
         * trailer section) bounds that too. */
        p->raw_head += used;
        if (p->raw_head > p->lim.max_head_bytes) {
            h1c_fail(p, 431, "header fields too large");
            p->st = HTTP1_P_ERROR;
            return -EPROTO;
        }
    }
    return (ssize_t)used;
}

void http1_parser_resume(struct http1_parser *p)
{
    switch (p->st) {
    case HTTP1_P_PAUSED:
        llhttp_resume(&p->ll);
        p->st = p->st_resume;
        break;
    case HTTP1_P_DONE:
        llhttp_resume(&p->ll);
        p->st = HTTP1_P_IDLE;
        break;
    case HTTP1_P_UPGRADED:
        llhttp_resume_after_upgrade(&p->ll);
        p->upgrade = false;
        p->st = HTTP1_P_IDLE;
        break;
    default:
        break;
    }
}

int http1_parser_finish(struct http1_parser *p)
{
    switch (p->st) {
    case HTTP1_P_ERROR:
        return -EPROTO;
    case HTTP1_P_IDLE:
    case HTTP1_P_DONE:
    case HTTP1_P_UPGRADED:
    case HTTP1_P_CLOSED:
        p->st = HTTP1_P_CLOSED;
        return 0;
    case HTTP1_P_PAUSED: {
        /* No more bytes will come: the pause (back-pressure) has nothing left to hold back. What llhttp had
         * left to do after the paused callback (a message end that needs no more bytes) runs first. */
        llhttp_resume(&p->ll);
        p->st = p->st_resume;
        ssize_t r = http1_parser_feed(p, NULL, 0);
        if (r < 0) return (int)r;
        if (p->st == HTTP1_P_DONE || p->st == HTTP1_P_UPGRADED) {
            p->st = HTTP1_P_CLOSED;
            return 0;
        }
        if (p->st ==
            HTTP1_P_PAUSED) { /* a callback paused again: resume once more, there is nothing to wait for */
            llhttp_resume(&p->ll);
            p->st = p->st_resume;
        }
        break;
    }
    default:
        break;
    }
    llhttp_errno_t e = llhttp_finish(&p->ll);
    if (e == HPE_PAUSED && p->st == HTTP1_P_DONE) e = HPE_OK; /* on_message_complete's usual pause */
    if (e != HPE_OK) {
        if (!p->err_status) {
            p->err_status = 400;
            p->err_reason = "connection closed mid-message";
        }
        p->st = HTTP1_P_ERROR;
        return -EPROTO;
    }
    p->st = HTTP1_P_CLOSED;
    return 0;
}

void http1_parser_response_to_head(struct http1_parser *p)
{
    p->to_head = true;
}

void http1_parser_response_to_connect(struct http1_parser *p)
{
    p->to_connect = true;
}

enum http1_parser_state http1_parser_state(const struct http1_parser *p)
{
    return p->st;
}

uint64_t http1_parser_messages(const struct http1_parser *p)
{
    return p->messages;
}

/* ---- serializers ---- */

int http1_out_append(struct http1_out *o, const void *data, size_t n)
{
    if (n > o->cap - o->n) {
        size_t ncap = o->cap ? o->cap : 256;
        while (ncap - o->n < n) {
            if (ncap > SIZE_MAX / 2) return -ENOMEM;
            ncap *= 2;
        }
        char *np = realloc(o->p, ncap);
        if (!np) return -ENOMEM;
        o->p = np;
        o->cap = ncap;
    }
    if (n) memcpy(o->p + o->n, data, n);
    o->n += n;
    return 0;
}

void http1_out_reset(struct http1_out *o)
{
    o->n = 0;
}

void http1_out_free(struct http1_out *o)
{
    free(o->p);
    o->p = NULL;
    o->n = o->cap = 0;
}

static int h1c_puts(struct http1_out *o, const char *s)
{
    return http1_out_append(o, s, strlen(s));
}

/* RFC 9110 §5.6.2 tchar. */
static bool h1c_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool h1c_token(const char *s, size_t n)
{
    if (!n) return false;
    for (size_t i = 0; i < n; i++)
        if (!h1c_tchar((unsigned char)s[i])) return false;
    return true;
}

/* A field value or reason phrase as RFC 9110 §5.5 allows: no control characters but HTAB (so no CR, LF or
 * NUL, which would end the line or split the message). */
static bool h1c_text(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
    }
    return true;
}

/* A request-target: visible characters only (a space would end it early). */
static bool h1c_target(const char *s, size_t n)
{
    if (!n) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f) return false;
    }
    return true;
}

/* Writes the fields (skipping framing ones), the framing header and the blank line. */
static int h1c_write_fields(struct http1_out *o, const struct http1_hdr *h, size_t n,
                            enum http1_framing framing, uint64_t content_length)
{
    int r = 0;
    for (size_t i = 0; i < n && !r; i++) {
        if (!h1c_token(h[i].name, h[i].name_len) || !h1c_text(h[i].value, h[i].value_len)) return -EINVAL;
        if (http1_name_is(h[i].name, h[i].name_len, "content-length") ||
            http1_name_is(h[i].name, h[i].name_len, "transfer-encoding"))
            continue;
        if (!(r = http1_out_append(o, h[i].name, h[i].name_len)) && !(r = http1_out_append(o, ": ", 2)) &&
            !(r = http1_out_append(o, h[i].value, h[i].value_len)))
            r = http1_out_append(o, "\r\n", 2);
    }
    if (r) return r;
    if (framing == HTTP1_BODY_LENGTH) {
        char cl[48];
        int cn = snprintf(cl, sizeof(cl), "content-length: %" PRIu64 "\r\n", content_length);
        r = http1_out_append(o, cl, (size_t)cn);
    } else if (framing == HTTP1_BODY_CHUNKED) {
        r = h1c_puts(o, "transfer-encoding: chunked\r\n");
    }
    return r ? r : http1_out_append(o, "\r\n", 2);
}

int http1_write_request_head(struct http1_out *o, const char *method, size_t method_len, const char *target,
                             size_t target_len, const struct http1_hdr *headers, size_t n,
                             enum http1_framing framing, uint64_t content_length)
{
    if (!h1c_token(method, method_len) || !h1c_target(target, target_len) || framing == HTTP1_BODY_UNTIL_EOF)
        return -EINVAL;
    size_t start = o->n;
    int r;
    if (!(r = http1_out_append(o, method, method_len)) && !(r = http1_out_append(o, " ", 1)) &&
        !(r = http1_out_append(o, target, target_len)) && !(r = h1c_puts(o, " HTTP/1.1\r\n")))
        r = h1c_write_fields(o, headers, n, framing, content_length);
    if (r) o->n = start;
    return r;
}

int http1_write_response_head(struct http1_out *o, int status, const char *reason,
                              const struct http1_hdr *headers, size_t n, enum http1_framing framing,
                              uint64_t content_length)
{
    if (status < 100 || status > 999) return -EINVAL;
    if (!reason) reason = http1_reason_phrase(status);
    size_t rlen = strlen(reason);
    if (!h1c_text(reason, rlen)) return -EINVAL;
    size_t start = o->n;
    char line[32];
    int ln = snprintf(line, sizeof(line), "HTTP/1.1 %03d ", status);
    int r;
    if (!(r = http1_out_append(o, line, (size_t)ln)) && !(r = http1_out_append(o, reason, rlen)) &&
        !(r = http1_out_append(o, "\r\n", 2)))
        r = h1c_write_fields(o, headers, n, framing, content_length);
    if (r) o->n = start;
    return r;
}

int http1_write_chunk_header(struct http1_out *o, size_t n)
{
    if (!n) return -EINVAL;
    char line[32];
    int ln = snprintf(line, sizeof(line), "%zx\r\n", n);
    return http1_out_append(o, line, (size_t)ln);
}

int http1_write_chunk_end(struct http1_out *o)
{
    return http1_out_append(o, "\r\n", 2);
}

int http1_write_last_chunk(struct http1_out *o, const struct http1_hdr *trailers, size_t n)
{
    size_t start = o->n;
    int r = http1_out_append(o, "0\r\n", 3);
    for (size_t i = 0; i < n && !r; i++) {
        if (!h1c_token(trailers[i].name, trailers[i].name_len) ||
            !h1c_text(trailers[i].value, trailers[i].value_len)) {
            r = -EINVAL;
            break;
        }
        if (!(r = http1_out_append(o, trailers[i].name, trailers[i].name_len)) &&
            !(r = http1_out_append(o, ": ", 2)) &&
            !(r = http1_out_append(o, trailers[i].value, trailers[i].value_len)))
            r = http1_out_append(o, "\r\n", 2);
    }
    if (!r) r = http1_out_append(o, "\r\n", 2);
    if (r) o->n = start;
    return r;
}

/* ---- header helpers ---- */

struct h1c_name {
    const char *name;
    size_t len;
};

static bool h1c_names_field(const char *e, size_t len, const void *arg)
{
    const struct h1c_name *n = arg;
    if (len != n->len) return false;
    for (size_t i = 0; i < len; i++) {
        char a = e[i], b = n->name[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
        if (a != b) return false;
    }
    return true;
}

bool http1_hop_by_hop(const char *name, size_t name_len, const char *connection_value, size_t cv_len)
{
    static const char *const fixed[] = {"connection",        "keep-alive", "proxy-connection", "te",
                                        "transfer-encoding", "upgrade",    "trailer"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (http1_name_is(name, name_len, fixed[i])) return true;
    if (!connection_value) return false;
    struct h1c_name n = {name, name_len};
    return h1c_list_any(connection_value, cv_len, h1c_names_field, &n);
}

const char *http1_reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 102:
        return "Processing";
    case 103:
        return "Early Hints";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 305:
        return "Use Proxy";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    case 511:
        return "Network Authentication Required";
    default:
        return "Unknown";
    }
}

bool http1_method_idempotent(const char *method, size_t len, bool *safe)
{
    static const char *const safe_m[] = {"GET", "HEAD", "OPTIONS", "TRACE"};
    static const char *const idem_m[] = {"PUT", "DELETE"};
    /* Methods are case-sensitive (RFC 9110 §9.1). */
    for (size_t i = 0; i < sizeof(safe_m) / sizeof(safe_m[0]); i++)
        if (len == strlen(safe_m[i]) && !memcmp(method, safe_m[i], len)) {
            if (safe) *safe = true;
            return true;
        }
    if (safe) *safe = false;
    for (size_t i = 0; i < sizeof(idem_m) / sizeof(idem_m[0]); i++)
        if (len == strlen(idem_m[i]) && !memcmp(method, idem_m[i], len)) return true;
    return false;
}
