/* Unit tests for logging (src/core/log.c): RUST_LOG-style level specs, the text line, and the JSON line, which
 * is checked with a strict JSON parser (RFC 8259 grammar for a flat object) written for this test. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/log.h"

/* ---- capturing stderr ---- */

static char cap[16384];
static size_t cap_len;
static int cap_pipe[2] = {-1, -1}, saved_stderr = -1;

/* Redirects fd 2 into a pipe. Nothing may assert between cap_begin and cap_end (cmocka reports on stderr). */
static void cap_begin(void)
{
    if (pipe2(cap_pipe, O_NONBLOCK) < 0) abort();
    fcntl(cap_pipe[1], F_SETPIPE_SZ, 1 << 20);
    saved_stderr = dup(STDERR_FILENO);
    dup2(cap_pipe[1], STDERR_FILENO);
}

static const char *cap_end(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    close(cap_pipe[1]);
    cap_len = 0;
    ssize_t n;
    while ((n = read(cap_pipe[0], cap + cap_len, sizeof(cap) - 1 - cap_len)) > 0) cap_len += (size_t)n;
    close(cap_pipe[0]);
    cap[cap_len] = 0;
    return cap;
}

/* ---- a strict parser for one flat JSON object ---- */

enum jtype { J_STRING, J_NUMBER, J_LITERAL };

struct jfield {
    char key[64];
    char val[4200]; /* decoded string, or the number's text */
    enum jtype type;
};

struct jobj {
    struct jfield f[24];
    int n;
};

static void skip_ws(const char **p)
{
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r') (*p)++;
}

/* Parses a JSON string at *p into out (decoded; \u00XX only below 0x80, enough for this test). */
static int parse_string(const char **p, char *out, size_t cap)
{
    size_t n = 0;
    if (**p != '"') return -1;
    (*p)++;
    for (;;) {
        unsigned char c = (unsigned char)**p;
        if (c == 0 || c < 0x20) return -1; /* unterminated, or a raw control byte */
        (*p)++;
        if (c == '"') break;
        if (c == '\\') {
            char e = **p;
            (*p)++;
            switch (e) {
            case '"': c = '"'; break;
            case '\\': c = '\\'; break;
            case '/': c = '/'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    char h = **p;
                    if (!isxdigit((unsigned char)h)) return -1;
                    v = v * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                    (*p)++;
                }
                if (v >= 0x80) return -1;
                c = (unsigned char)v;
                break;
            }
            default:
                return -1;
            }
        }
        if (n + 1 >= cap) return -1;
        out[n++] = (char)c;
    }
    out[n] = 0;
    return 0;
}

/* RFC 8259 number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int parse_number(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    if (**p == '-') (*p)++;
    if (**p == '0') {
        (*p)++;
    } else if (**p >= '1' && **p <= '9') {
        while (isdigit((unsigned char)**p)) (*p)++;
    } else {
        return -1;
    }
    if (**p == '.') {
        (*p)++;
        if (!isdigit((unsigned char)**p)) return -1;
        while (isdigit((unsigned char)**p)) (*p)++;
    }
    if (**p == 'e' || **p == 'E') {
        (*p)++;
        if (**p == '+' || **p == '-') (*p)++;
        if (!isdigit((unsigned char)**p)) return -1;
        while (isdigit((unsigned char)**p)) (*p)++;
    }
    size_t n = (size_t)(*p - s);
    if (n + 1 > cap) return -1;
    memcpy(out, s, n);
    out[n] = 0;
    return 0;
}

/* Parses exactly one object followed by "\n" and the end of text. Returns 0 or -1. */
static int json_parse_line(const char *s, struct jobj *o)
{
    const char *p = s;
    o->n = 0;
    skip_ws(&p);
    if (*p++ != '{') return -1;
    skip_ws(&p);
    if (*p == '}') {
        p++;
    } else {
        for (;;) {
            if (o->n == (int)(sizeof(o->f) / sizeof(o->f[0]))) return -1;
            struct jfield *f = &o->f[o->n];
            skip_ws(&p);
            if (parse_string(&p, f->key, sizeof(f->key)) < 0) return -1;
            for (int i = 0; i < o->n; i++)
                if (strcmp(o->f[i].key, f->key) == 0) return -1; /* duplicate keys */
            skip_ws(&p);
            if (*p++ != ':') return -1;
            skip_ws(&p);
            if (*p == '"') {
                f->type = J_STRING;
                if (parse_string(&p, f->val, sizeof(f->val)) < 0) return -1;
            } else if (strncmp(p, "true", 4) == 0 || strncmp(p, "null", 4) == 0) {
                f->type = J_LITERAL;
                memcpy(f->val, p, 4);
                f->val[4] = 0;
                p += 4;
            } else if (strncmp(p, "false", 5) == 0) {
                f->type = J_LITERAL;
                strcpy(f->val, "false");
                p += 5;
            } else {
                f->type = J_NUMBER;
                if (parse_number(&p, f->val, sizeof(f->val)) < 0) return -1;
            }
            o->n++;
            skip_ws(&p);
            if (*p == ',') {
                p++;
                continue;
            }
            if (*p++ != '}') return -1;
            break;
        }
    }
    if (*p++ != '\n') return -1;
    return *p == 0 ? 0 : -1;
}

static const struct jfield *jget(const struct jobj *o, const char *key)
{
    for (int i = 0; i < o->n; i++)
        if (strcmp(o->f[i].key, key) == 0) return &o->f[i];
    return NULL;
}

/* Asserts the validator itself rejects what it should, so a passing JSON test means something. */
static void test_validator_self_check(void **state)
{
    (void)state;
    struct jobj o;
    assert_int_equal(json_parse_line("{\"a\":1,\"b\":\"x\\n\\u0041\"}\n", &o), 0);
    assert_int_equal(o.n, 2);
    assert_string_equal(jget(&o, "b")->val, "x\nA");
    static const char *const bad[] = {
        "{\"a\":01}\n",  "{\"a\":\"x\ny\"}\n", "{\"a\":\"x}\n",   "{\"a\":1}",      "{\"a\":1,}\n",
        "{\"a\":1}}\n",  "{a:1}\n",           "{\"a\":\"\\q\"}\n", "{\"a\":1,\"a\":2}\n", "{\"a\":-}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) assert_int_equal(json_parse_line(bad[i], &o), -1);
}

/* ---- levels ---- */

static void test_set_level(void **state)
{
    (void)state;
    assert_int_equal(log_set_level("debug"), 0);
    assert_int_equal(log_level_cur, LOG_DEBUG);
    assert_true(log_enabled(LOG_DEBUG));
    assert_false(log_enabled(LOG_TRACE));
    assert_int_equal(log_set_level("warn"), 0);
    assert_int_equal(log_level_cur, LOG_WARN);
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_ERROR));
    /* RUST_LOG with targets: one global level, the last one wins. */
    assert_int_equal(log_set_level("ztunnel=debug,info"), 0);
    assert_int_equal(log_level_cur, LOG_INFO);
    assert_int_equal(log_set_level("info,ztunnel::proxy=trace"), 0);
    assert_int_equal(log_level_cur, LOG_TRACE);
    assert_int_equal(log_set_level("ERROR"), 0);
    assert_int_equal(log_level_cur, LOG_ERROR);
    assert_int_equal(log_set_level("warning"), 0);
    assert_int_equal(log_level_cur, LOG_WARN);
    assert_int_equal(log_set_level("off"), 0);
    assert_int_equal(log_level_cur, LOG_ERROR);
    /* Rejected specs leave the level alone. */
    assert_int_equal(log_set_level("info"), 0);
    assert_int_equal(log_set_level("loud"), -EINVAL);
    assert_int_equal(log_set_level("ztunnel=loud"), -EINVAL);
    assert_int_equal(log_set_level("debug,loud"), -EINVAL);
    assert_int_equal(log_set_level(""), -EINVAL);
    assert_int_equal(log_set_level("debugx"), -EINVAL);
    assert_int_equal(log_level_cur, LOG_INFO);
    assert_string_equal(log_level_name(LOG_WARN), "warn");
    assert_string_equal(log_level_name(LOG_TRACE), "trace");
    assert_string_equal(log_level_name(42), "info");

    /* log_init reads RUST_LOG. */
    setenv("RUST_LOG", "ztunnel=trace,debug", 1);
    unsetenv("LOG_FORMAT");
    log_init();
    assert_int_equal(log_level_cur, LOG_DEBUG);
    unsetenv("RUST_LOG");
    log_set_level("info");
}

/* ---- text lines ---- */

static void test_text_line(void **state)
{
    (void)state;
    unsetenv("LOG_FORMAT");
    unsetenv("RUST_LOG");
    log_init();
    log_set_level("info");
    cap_begin();
    log_kv(LOG_WARN, "ztunnel::proxy", "connection failed", "src", "10.0.0.1:4242", "error", "connection refused",
           "empty", "", "nullv", NULL, NULL);
    log_kv(LOG_DEBUG, "ztunnel", "filtered out", NULL);
    LOG_D("ztunnel", "also filtered %d", 1);
    LOG_I("ztunnel", "started %d workers", 2);
    const char *out = cap_end();
    /* "2024-01-02T03:04:05.123456Z  WARN ztunnel::proxy: connection failed src=... error=\"...\"" */
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    assert_true(strlen(out) > 28);
    assert_int_equal(out[4], '-');
    assert_int_equal(out[10], 'T');
    assert_int_equal(out[26], 'Z');
    assert_non_null(strstr(out, "  WARN ztunnel::proxy: connection failed src=10.0.0.1:4242 "
                                "error=\"connection refused\" empty=\"\" nullv=\"\"\n"));
    assert_null(strstr(out, "filtered"));
    assert_non_null(strstr(nl + 1, "  INFO ztunnel: started 2 workers\n"));
    /* Exactly two lines. */
    assert_null(strchr(strchr(nl + 1, '\n') + 1, '\n'));
}

/* ---- JSON lines ---- */

static void json_on(void)
{
    setenv("LOG_FORMAT", "json", 1);
    unsetenv("RUST_LOG");
    log_init();
    log_set_level("info");
}

static void check_time(const char *t)
{
    /* RFC 3339 UTC with microseconds: 2024-01-02T03:04:05.123456Z */
    assert_int_equal(strlen(t), 27);
    const char *shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    for (int i = 0; shape[i]; i++) {
        if (shape[i] == 'd')
            assert_true(isdigit((unsigned char)t[i]));
        else
            assert_int_equal(t[i], shape[i]);
    }
}

static void test_json_line(void **state)
{
    (void)state;
    json_on();
    const char *msg = "say \"hi\"\nthen\\leave\t\x01";
    cap_begin();
    log_kv(LOG_WARN, "ztunnel::proxy", msg, "bytes_sent", "1234", "src.addr", "10.0.0.1:4242", "empty", "",
           "quoted", "a\"b\nc", "zero", "0", "neg", "-5", "big", "12345678901234567890", NULL);
    const char *out = cap_end();
    struct jobj o;
    if (json_parse_line(out, &o) < 0) print_error("invalid JSON: %s", out);
    assert_int_equal(json_parse_line(out, &o), 0);
    const struct jfield *f;
    assert_non_null(f = jget(&o, "level"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "warn");
    assert_non_null(f = jget(&o, "time"));
    check_time(f->val);
    assert_non_null(f = jget(&o, "target"));
    assert_string_equal(f->val, "ztunnel::proxy");
    assert_non_null(f = jget(&o, "message"));
    assert_string_equal(f->val, msg); /* quotes, newline, backslash, tab, control byte round-trip */
    /* Numeric strings are numbers. */
    assert_non_null(f = jget(&o, "bytes_sent"));
    assert_int_equal(f->type, J_NUMBER);
    assert_string_equal(f->val, "1234");
    assert_non_null(f = jget(&o, "zero"));
    assert_int_equal(f->type, J_NUMBER);
    assert_string_equal(f->val, "0");
    /* Anything else is a string: addresses, empty, negative (not a plain count), too long for an integer. */
    assert_non_null(f = jget(&o, "src.addr"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "10.0.0.1:4242");
    assert_non_null(f = jget(&o, "empty"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "");
    assert_non_null(f = jget(&o, "quoted"));
    assert_string_equal(f->val, "a\"b\nc");
    assert_non_null(f = jget(&o, "neg"));
    assert_int_equal(f->type, J_STRING);
    assert_non_null(f = jget(&o, "big"));
    assert_int_equal(f->type, J_STRING);
    assert_int_equal(o.n, 11);
    /* The line is exactly one line: the embedded newlines were escaped. */
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    /* Keys come in order: level, time, target, message, then fields. */
    assert_string_equal(o.f[0].key, "level");
    assert_string_equal(o.f[1].key, "time");
    assert_string_equal(o.f[2].key, "target");
    assert_string_equal(o.f[3].key, "message");
    assert_string_equal(o.f[4].key, "bytes_sent");
}

static void test_json_kvv_skips_null(void **state)
{
    (void)state;
    json_on();
    const char *kv[] = {"a", "1", "b", NULL, "c", "x y", "d", NULL};
    cap_begin();
    log_kvv(LOG_ERROR, "access", "done", kv, 4);
    log_kvv(LOG_DEBUG, "access", "filtered", kv, 4);
    log_fmt(LOG_INFO, "fmt", "%d%% of \"%s\"", 50, "x");
    const char *out = cap_end();
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    char first[4096];
    memcpy(first, out, (size_t)(nl - out + 1));
    first[nl - out + 1] = 0;
    struct jobj o;
    assert_int_equal(json_parse_line(first, &o), 0);
    assert_int_equal(o.n, 6);
    assert_string_equal(jget(&o, "level")->val, "error");
    assert_int_equal(jget(&o, "a")->type, J_NUMBER);
    assert_null(jget(&o, "b"));
    assert_string_equal(jget(&o, "c")->val, "x y");
    assert_null(jget(&o, "d"));
    /* The DEBUG line was filtered; the next line is log_fmt's, also valid JSON. */
    assert_int_equal(json_parse_line(nl + 1, &o), 0);
    assert_string_equal(jget(&o, "message")->val, "50% of \"x\"");
    assert_string_equal(jget(&o, "target")->val, "fmt");
    assert_int_equal(o.n, 4);
}

/* BUG (src/core/log.c is_number): any all-digit value shorter than 19 characters is written bare, so "007"
 * (e.g. a zero-padded id) becomes `"id":007`, which is not JSON (RFC 8259 forbids leading zeros). Fix: treat
 * a value as a number only if it is "0" or does not start with '0'. This test fails until then. */
static void test_json_leading_zero(void **state)
{
    (void)state;
    json_on();
    cap_begin();
    log_kv(LOG_INFO, "t", "m", "id", "007", NULL);
    const char *out = cap_end();
    struct jobj o;
    if (json_parse_line(out, &o) < 0) print_error("invalid JSON: %s", out);
    assert_int_equal(json_parse_line(out, &o), 0);
    assert_string_equal(jget(&o, "id")->val, "007");
}

/* BUG (src/core/log.c put/finish): a line longer than the 4096-byte buffer is cut at 4094 bytes, and then the
 * closing quote and '}' no longer fit (puts_ truncates them to nothing), so a long JSON line is invalid (an
 * unterminated string); an escape sequence can also be cut in half. Fix: reserve room for the closing `"}` and
 * truncate on a character boundary (or mark the line truncated). This test fails until then. */
static void test_json_long_line(void **state)
{
    (void)state;
    json_on();
    char big[3000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    cap_begin();
    log_kv(LOG_INFO, "t", "long fields", "a", big, "b", big, NULL);
    const char *out = cap_end();
    struct jobj o;
    assert_true(strlen(out) > 100);
    assert_int_equal(out[strlen(out) - 1], '\n'); /* still one whole line */
    if (json_parse_line(out, &o) < 0) print_error("invalid JSON, ends with: %s", out + strlen(out) - 40);
    assert_int_equal(json_parse_line(out, &o), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validator_self_check), cmocka_unit_test(test_set_level),
        cmocka_unit_test(test_text_line),            cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_json_kvv_skips_null),  cmocka_unit_test(test_json_leading_zero),
        cmocka_unit_test(test_json_long_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
