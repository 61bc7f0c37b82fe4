/* RequestMirror's parts shared by the HTTP/1.1 (http1.c) and h2c (h2c_mirror.c) shadows. */
#pragma once
#include <stddef.h>
#include <sys/types.h>

/* A shadow's Host / :authority, at most this long (with its NUL); a longer one sends no shadow (logged). */
#define WP_SHADOW_HOST_MAX 512

/* The shadow's host for host[0..len), as Envoy's shadowAppendedHost (envoyproxy/envoy
 * source/common/router/shadow_writer_impl.cc): "-shadow" inserted before the port, the port starting at the
 * last ':' unless that is inside an IPv6 literal's brackets (Http::HeaderUtility::getPortStart): "a" ->
 * "a-shadow", "f.example:80" -> "f.example-shadow:80", "[::1]:80" -> "[::1]-shadow:80". Writes it
 * NUL-terminated into out (n bytes). Returns its length, -EINVAL for an empty host (Envoy asserts one), or
 * -ENOSPC when it does not fit (out is then ""). */
ssize_t wp_shadow_host(const char *host, size_t len, char *out, size_t n);
