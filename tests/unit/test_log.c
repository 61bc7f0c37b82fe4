/* Unit tests for logging (src/core/log.c): RUST_LOG filters, Istio's text and JSON lines (the JSON is checked
 * with a strict JSON parser (RFC 8259 grammar for a flat object) written for this test. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
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
    while ((n = read(cap_pipe[0], cap + cap_len, sizeof(cap) - 1 - cap_len)) > 0)
        cap_len += (size_t)n;
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
    while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
        (*p)++;
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
            case '"':
                c = '"';
                break;
            case '\\':
                c = '\\';
                break;
            case '/':
                c = '/';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'n':
                c = '\n';
                break;
            case 'r':
                c = '\r';
                break;
            case 't':
                c = '\t';
                break;
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
        while (isdigit((unsigned char)**p))
            (*p)++;
    } else {
        return -1;
    }
    if (**p == '.') {
        (*p)++;
        if (!isdigit((unsigned char)**p)) return -1;
        while (isdigit((unsigned char)**p))
            (*p)++;
    }
    if (**p == 'e' || **p == 'E') {
        (*p)++;
        if (**p == '+' || **p == '-') (*p)++;
        if (!isdigit((unsigned char)**p)) return -1;
        while (isdigit((unsigned char)**p))
            (*p)++;
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
        "{\"a\":01}\n",        "{\"a\":\"x\ny\"}\n", "{\"a\":\"x}\n", "{\"a\":1}",
        "{\"a\":1,}\n",        "{\"a\":1}}\n",       "{a:1}\n",       "{\"a\":\"\\q\"}\n",
        "{\"a\":1,\"a\":2}\n", "{\"a\":-}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(json_parse_line(bad[i], &o), -1);
}

/* ---- filters (RUST_LOG, tracing-subscriber's Targets) ---- */

static void test_filter_levels(void **state)
{
    (void)state;
    char cur[LOG_FILTER_STR_MAX];
    assert_int_equal(log_init("debug", false), 0);
    assert_int_equal(log_level_max, LOG_DEBUG);
    assert_true(log_enabled(LOG_DEBUG));
    assert_false(log_enabled(LOG_TRACE));
    assert_int_equal(log_target_level("ztunnel::proxy"), LOG_DEBUG);
    assert_int_equal(log_filter_set("warn"), 0);
    assert_false(log_enabled(LOG_INFO));
    assert_true(log_enabled(LOG_ERROR));
    /* Per-target: the longest matching prefix wins, the bare level is the default. */
    assert_int_equal(log_filter_set("info,access=off,ztunnel::proxy=debug,ztunnel::proxy::pool=warn"), 0);
    assert_int_equal(log_level_max, LOG_DEBUG);
    assert_int_equal(log_target_level("access"), LOG_OFF);
    assert_false(log_target_enabled(LOG_ERROR, "access"));
    assert_true(log_target_enabled(LOG_INFO, "ztunnel"));
    assert_false(log_target_enabled(LOG_DEBUG, "ztunnel"));
    assert_true(log_target_enabled(LOG_DEBUG, "ztunnel::proxy::inbound"));
    assert_false(log_target_enabled(LOG_INFO, "ztunnel::proxy::pool"));
    assert_true(log_target_enabled(LOG_WARN, "ztunnel::proxy::pool"));
    /* Printed as tracing prints it: most specific first, the default last. */
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "ztunnel::proxy::pool=warn,ztunnel::proxy=debug,access=off,info");
    /* Later directives for the same target win; levels in any case, or 0..5. */
    assert_int_equal(log_filter_set("access=debug,info,access=ERROR,3"), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "access=error,info");
    assert_int_equal(log_filter_set("0"), 0);
    assert_int_equal(log_level_max, LOG_OFF);
    assert_false(log_target_enabled(LOG_ERROR, "ztunnel"));
    /* Without a default directive, other targets are off (as in tracing). */
    assert_int_equal(log_filter_set("access=info"), 0);
    assert_true(log_target_enabled(LOG_INFO, "access"));
    assert_false(log_target_enabled(LOG_ERROR, "ztunnel"));
    /* A bare word that is not a level is a target at trace, reported through bare_target. */
    bool bare = false;
    assert_int_equal(log_filter_check("info,dbug", &bare, NULL, 0), 0);
    assert_true(bare);
    assert_int_equal(log_filter_check("info,access=off", &bare, NULL, 0), 0);
    assert_false(bare);
    /* Invalid specs change nothing. */
    char why[128];
    assert_int_equal(log_filter_set("info"), 0);
    assert_int_equal(log_filter_check("a=b=c", NULL, why, sizeof(why)), -EINVAL);
    assert_non_null(strstr(why, "too many '='"));
    assert_int_equal(log_filter_check("access=loud", NULL, why, sizeof(why)), -EINVAL);
    assert_non_null(strstr(why, "unknown level \"loud\""));
    assert_int_equal(log_filter_check("info,", NULL, why, sizeof(why)), -EINVAL);
    assert_int_equal(log_filter_check("foo[{bar}]=info", NULL, why, sizeof(why)), -EINVAL);
    assert_int_equal(log_filter_set("ztunnel=loud"), -EINVAL);
    assert_int_equal(log_filter_set(""), -EINVAL);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "info");
    assert_string_equal(log_level_name(LOG_WARN), "warn");
    assert_string_equal(log_level_name(LOG_OFF), "off");
    assert_string_equal(log_level_name(42), "info");
}

/* POST /logging semantics (Istio's telemetry::set_level): the current filter plus the new directives, or the
 * start-up filter plus them with reset. */
static void test_filter_update(void **state)
{
    (void)state;
    char cur[LOG_FILTER_STR_MAX];
    assert_int_equal(log_init("info,access=off", false), 0);
    assert_int_equal(log_filter_update(false, "ztunnel::proxy=debug"), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "ztunnel::proxy=debug,access=off,info");
    assert_int_equal(log_filter_update(false, "debug"), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "ztunnel::proxy=debug,access=off,debug");
    assert_int_equal(log_filter_update(false, "bad=level"), -EINVAL);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "ztunnel::proxy=debug,access=off,debug");
    assert_int_equal(log_filter_update(true, ""), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "access=off,info");
    assert_int_equal(log_filter_update(true, "access=info"), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "access=info,info");
    assert_int_equal(log_init(NULL, false), 0);
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "info");
}

/* RUST_LOG=info,access=off silences the access log only. */
static void test_filter_silences_target(void **state)
{
    (void)state;
    assert_int_equal(log_init("info,access=off", false), 0);
    cap_begin();
    log_kv(LOG_INFO, "access", "connection complete", "bytes_sent", "1", NULL);
    log_kvv(LOG_ERROR, "access", "connection complete", (const char *const[]){"a", "1"}, 1);
    LOG_I("access", "from the macro");
    LOG_I("ztunnel", "kept %d", 1);
    log_kv(LOG_WARN, "ztunnel::proxy::inbound", "kept too", NULL);
    const char *out = cap_end();
    assert_null(strstr(out, "connection complete"));
    assert_null(strstr(out, "from the macro"));
    assert_non_null(strstr(out, "\tinfo\tztunnel\tkept 1\t\n"));
    assert_non_null(strstr(out, "\twarn\tproxy::inbound\tkept too\t\n"));
    assert_int_equal(log_init(NULL, false), 0);
}

/* ---- text lines (istio/ztunnel src/telemetry.rs IstioFormat) ---- */

static void check_time(const char *t)
{
    /* tracing-subscriber's SystemTime: RFC 3339 UTC with microseconds, 2024-01-02T03:04:05.123456Z */
    const char *shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    for (int i = 0; shape[i]; i++) {
        if (shape[i] == 'd')
            assert_true(isdigit((unsigned char)t[i]));
        else
            assert_int_equal(t[i], shape[i]);
    }
}

static void test_text_line(void **state)
{
    (void)state;
    assert_int_equal(log_init("info", false), 0);
    cap_begin();
    log_kv(LOG_WARN, "ztunnel::proxy", "connection failed", "%src.addr", "10.0.0.1:4242", "error",
           "connection refused", "empty", "", "nullv", NULL, "bytes", "42", "esc", "a\"b\\c\nd\x01", NULL);
    log_kv(LOG_DEBUG, "ztunnel", "filtered out", NULL);
    LOG_D("ztunnel", "also filtered %d", 1);
    LOG_I("ztunnel", "started %d workers", 2);
    log_kv(LOG_INFO, "access", "line\nbreak", NULL);
    const char *out = cap_end();
    /* <time>\t<level>\t<target without "ztunnel::">\t<message>\t<k=v ...>: Display values bare, strings as
     * Rust's Debug (quoted, escaped), numbers bare. */
    const char *nl = strchr(out, '\n');
    assert_non_null(nl);
    check_time(out);
    assert_int_equal(out[27], '\t');
    assert_memory_equal(
        out + 27,
        "\twarn\tproxy\tconnection failed\tsrc.addr=10.0.0.1:4242 error=\"connection refused\" "
        "empty=\"\" nullv=\"\" bytes=42 esc=\"a\\\"b\\\\c\\nd\\u{1}\"\n",
        (size_t)(nl - out - 27 + 1));
    assert_null(strstr(out, "filtered"));
    /* No fields: the message is still followed by its tab. */
    assert_non_null(strstr(nl + 1, "\tinfo\tztunnel\tstarted 2 workers\t\n"));
    /* A control character in the message cannot split the line. */
    assert_non_null(strstr(nl + 1, "\tinfo\taccess\tline\\nbreak\t\n"));
    int lines = 0;
    for (const char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 3);
}

/* ---- JSON lines (IstioJsonFormat) ---- */

static void json_on(void)
{
    assert_int_equal(log_init("info", true), 0);
}

static void test_json_line(void **state)
{
    (void)state;
    json_on();
    const char *msg = "say \"hi\"\nthen\\leave\t\x01";
    cap_begin();
    log_kv(LOG_WARN, "ztunnel::proxy", msg, "bytes_sent", "1234", "%src.addr", "10.0.0.1:4242", "empty", "",
           "quoted", "a\"b\nc", "zero", "0", "neg", "-5", "big", "12345678901234567890", "%disp", "77", NULL);
    const char *out = cap_end();
    struct jobj o;
    if (json_parse_line(out, &o) < 0) print_error("invalid JSON: %s", out);
    assert_int_equal(json_parse_line(out, &o), 0);
    const struct jfield *f;
    assert_non_null(f = jget(&o, "level"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "warn");
    assert_non_null(f = jget(&o, "time"));
    assert_int_equal(strlen(f->val), 27);
    check_time(f->val);
    /* Istio's key for the target is "scope", with the full target. */
    assert_null(jget(&o, "target"));
    assert_non_null(f = jget(&o, "scope"));
    assert_string_equal(f->val, "ztunnel::proxy");
    assert_non_null(f = jget(&o, "message"));
    assert_string_equal(f->val, msg); /* quotes, newline, backslash, tab, control byte round-trip */
    /* serde_json's short escapes. */
    assert_non_null(strstr(out, "\\n") && strstr(out, "\\t") && strstr(out, "\\u0001"));
    /* Numeric strings are numbers. */
    assert_non_null(f = jget(&o, "bytes_sent"));
    assert_int_equal(f->type, J_NUMBER);
    assert_string_equal(f->val, "1234");
    assert_non_null(f = jget(&o, "zero"));
    assert_int_equal(f->type, J_NUMBER);
    /* Anything else is a string: addresses, empty, negative, too long for an integer, Display values. */
    assert_non_null(f = jget(&o, "src.addr"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "10.0.0.1:4242");
    assert_non_null(f = jget(&o, "empty"));
    assert_int_equal(f->type, J_STRING);
    assert_string_equal(f->val, "");
    assert_non_null(f = jget(&o, "quoted"));
    assert_string_equal(f->val, "a\"b\nc");
    assert_int_equal(jget(&o, "neg")->type, J_STRING);
    assert_int_equal(jget(&o, "big")->type, J_STRING);
    assert_int_equal(jget(&o, "disp")->type, J_STRING);
    assert_int_equal(o.n, 12);
    /* The line is exactly one line: the embedded newlines were escaped. */
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    /* Keys come in order: level, time, scope, message, then fields. */
    assert_string_equal(o.f[0].key, "level");
    assert_string_equal(o.f[1].key, "time");
    assert_string_equal(o.f[2].key, "scope");
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
    assert_string_equal(jget(&o, "scope")->val, "fmt");
    assert_int_equal(o.n, 4);
}

/* ---- the rate limiter ---- */

static void test_limit_burst_and_count(void **state)
{
    (void)state;
    struct log_limit l = {0};
    uint64_t sup = 99, t0 = 1000000;
    /* LOG_LIMIT_BURST lines pass in one interval, none reports a suppressed count. */
    for (int i = 0; i < LOG_LIMIT_BURST; i++) {
        assert_true(log_limit_allow_at(&l, t0 + (uint64_t)i, &sup));
        assert_int_equal(sup, 0);
    }
    /* The rest of the interval is dropped and counted. */
    for (int i = 0; i < 7; i++)
        assert_false(log_limit_allow_at(&l, t0 + 100, &sup));
    assert_false(log_limit_allow_at(&l, t0 + LOG_LIMIT_INTERVAL_MS - 10, &sup));
    /* The next interval's first line carries the count, the following ones none. */
    assert_true(log_limit_allow_at(&l, t0 + LOG_LIMIT_INTERVAL_MS + 5, &sup));
    assert_int_equal(sup, 8);
    assert_true(log_limit_allow_at(&l, t0 + LOG_LIMIT_INTERVAL_MS + 6, &sup));
    assert_int_equal(sup, 0);
}

static void test_limit_fmt_line(void **state)
{
    (void)state;
    assert_int_equal(log_init("info", false), 0);
    static struct log_limit l;
    cap_begin();
    for (int i = 0; i < LOG_LIMIT_BURST + 3; i++)
        log_fmt_limited(&l, LOG_WARN, "ztunnel::proxy", "accept: %d", i);
    /* Filtered lines neither print nor use the budget. */
    log_fmt_limited(&l, LOG_DEBUG, "ztunnel::proxy", "debug %d", 0);
    const char *out = cap_end();
    int lines = 0;
    for (const char *p = out; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, LOG_LIMIT_BURST);
    assert_non_null(strstr(out, "accept: 0\t\n"));
    assert_null(strstr(out, "accept: 5"));
    assert_int_equal(l.suppressed, 3);
    /* Once the interval has passed, the next line says how many were dropped. */
    atomic_store(&l.window, 1);
    cap_begin();
    log_fmt_limited(&l, LOG_WARN, "ztunnel::proxy", "accept: %s", "again");
    out = cap_end();
    assert_non_null(strstr(out, "\twarn\tproxy\taccept: again (3 more suppressed)\t\n"));
}

static void *limit_thread(void *arg)
{
    struct log_limit *l = arg;
    uint64_t sup;
    int passed = 0;
    for (int i = 0; i < 10000; i++)
        passed += log_limit_allow_at(l, 5000000, &sup);
    return (void *)(intptr_t)passed;
}

/* Several threads sharing one limiter: exactly the burst passes, everything else is counted. */
static void test_limit_threads(void **state)
{
    (void)state;
    static struct log_limit l;
    pthread_t th[4];
    int passed = 0;
    uint64_t sup;
    assert_true(log_limit_allow_at(&l, 5000000, &sup)); /* opens the interval */
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, limit_thread, &l);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        passed += (int)(intptr_t)r;
    }
    assert_int_equal(passed, LOG_LIMIT_BURST - 1);
    assert_int_equal(l.suppressed, 40000 - (LOG_LIMIT_BURST - 1));
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
 * unterminated string); an escape sequence can also be cut in half. Fix: reserve room for the closing `"}`
 * and truncate on a character boundary (or mark the line truncated). This test fails until then. */
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
        cmocka_unit_test(test_validator_self_check),
        cmocka_unit_test(test_filter_levels),
        cmocka_unit_test(test_filter_update),
        cmocka_unit_test(test_filter_silences_target),
        cmocka_unit_test(test_text_line),
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_json_kvv_skips_null),
        cmocka_unit_test(test_json_leading_zero),
        cmocka_unit_test(test_json_long_line),
        cmocka_unit_test(test_limit_burst_and_count),
        cmocka_unit_test(test_limit_fmt_line),
        cmocka_unit_test(test_limit_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
