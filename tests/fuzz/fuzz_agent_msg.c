/* libFuzzer target for the node agent's input parsers (src/cni/agent.c): the CNI plugin's message
 * (agent_message_check, the path every message on the plugin socket takes before it changes anything) and the
 * static enrolment file (agent_enrolment_parse). Input: the first byte picks the parser (even: message, odd:
 * enrolment file), the rest is copied into a heap buffer of exactly its length so ASan checks every read.
 * Checked besides memory safety, leaks and UB:
 *   - both return 0 or -1, and -1 comes with a non-empty message;
 *   - an accepted message is a JSON object whose event is "add" or "del", with a non-empty container_id, and
 *     an absolute netns for add;
 *   - an accepted enrolment file is a JSON array of as many entries as were returned, each with a name,
 *     namespace and service account of 1 to 253 bytes, and no namespace/name pair twice.
 * Build: `make fuzz-build`. Seeds: tests/fuzz/corpus/fuzz_agent_msg/ (an add and a del as zmesh-cni sends
 * them, an enrolment file with every field). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cni/agent.h"
#include "core/log.h"

static void check_message(const char *buf, size_t len)
{
    char err[512] = "";
    int r = agent_message_check(buf, len, err, sizeof err);
    if (r != 0 && r != -1) abort();
    if (r == -1) {
        if (!err[0]) abort();
        return;
    }
    json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) abort();
    const char *ev = json_string_value(json_object_get(o, "event"));
    const char *cid = json_string_value(json_object_get(o, "container_id"));
    const char *netns = json_string_value(json_object_get(o, "netns"));
    if (!ev || (strcmp(ev, "add") && strcmp(ev, "del"))) abort();
    if (!cid || !cid[0] || !netns) abort();
    if (strcmp(ev, "add") == 0 && netns[0] != '/') abort();
    json_decref(o);
}

static void check_file(const char *buf, size_t len)
{
    struct agent_enrolment *pods = NULL;
    size_t n = 0;
    char err[512] = "";
    int r = agent_enrolment_parse("fuzz.json", buf, len, &pods, &n, err, sizeof err);
    if (r != 0 && r != -1) abort();
    if (r == -1) {
        if (!err[0] || pods) abort();
        return;
    }
    json_t *a = json_loadb(buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_array(a) || json_array_size(a) != n) abort();
    json_decref(a);
    for (size_t i = 0; i < n; i++) {
        const char *f[] = {pods[i].name, pods[i].namespace_, pods[i].service_account};
        for (size_t k = 0; k < 3; k++)
            if (!f[k] || !f[k][0] || strlen(f[k]) > 253) abort();
        for (size_t j = 0; j < i; j++)
            if (strcmp(pods[i].name, pods[j].name) == 0 && strcmp(pods[i].namespace_, pods[j].namespace_) == 0)
                abort();
    }
    agent_enrolment_free(pods, n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        log_init("off", false);
        once = 1;
    }
    if (size < 1) return 0;
    size_t len = size - 1;
    char *buf = malloc(len ? len : 1);
    if (!buf) return 0;
    memcpy(buf, data + 1, len);
    if (data[0] & 1)
        check_file(buf, len);
    else
        check_message(buf, len);
    free(buf);
    return 0;
}
