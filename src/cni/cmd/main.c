/* zmesh-cni: the CNI plugin program (src/cni/README.md). The container runtime runs it with the spec's
 * CNI_* environment and the network configuration on stdin; the result or error goes to stdout, warnings to
 * stderr. Exit status 0 on success, 1 after printing an error object.
 *
 * This file lives in its own directory so that the library's wildcard (src/cni/\*.c) leaves it out of
 * libzmesh.a and of the fuzz targets, which must not see a second main(). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cni/plugin.h"

int main(void)
{
    struct cni_env env = {
        .command = getenv("CNI_COMMAND"),
        .container_id = getenv("CNI_CONTAINERID"),
        .netns = getenv("CNI_NETNS"),
        .ifname = getenv("CNI_IFNAME"),
        .args = getenv("CNI_ARGS"),
        .path = getenv("CNI_PATH"),
    };
    /* One byte over the bound tells "too long" from "exactly the bound"; cni_conf_parse refuses it. */
    size_t cap = CNI_STDIN_MAX + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) return 1;
    while (len < cap) {
        ssize_t n = read(STDIN_FILENO, buf + len, cap - len);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            struct cni_err err = {0};
            cni_fail(&err, CNI_ERR_IO, strerror(errno),
                     "failed to read the network configuration from stdin");
            char *s = cni_error_json(&err, NULL);
            if (s) printf("%s\n", s);
            free(s);
            free(buf);
            return 1;
        }
        len += (size_t)n;
    }
    int status = cni_run(&env, buf, len, stdout, stderr);
    free(buf);
    return status;
}
