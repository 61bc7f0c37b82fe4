/* One finished request into the metrics and the access log (wp.h's wp_record_request). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "waypoint/telemetry.h"
#include "waypoint/wp.h"

void wp_record_request(const struct wp_record *r)
{
    struct wp_tunnel *t = r->t;
    /* The codecs hand over the flags as a list; the metrics and the log print the set in Envoy's order. */
    char flags[WP_RF_TEXT_MAX];
    wp_flags_format(wp_flags_parse(r->flags), flags, sizeof(flags));
    struct wp_req_info ri = {
        .src_wl = t->src_wl,
        .src_principal = *t->peer_id ? t->peer_id : NULL,
        .dst_wl = r->dst_wl,
        .dst_svc = r->dst_svc,
        .host = r->authority,
        .grpc = r->grpc,
        .response_code = r->status,
        .grpc_status = r->grpc_status,
        .response_flags = flags,
        .request_bytes = r->req_wire,
        .response_bytes = r->resp_wire,
        .duration_ms = r->duration_ms,
        .request_messages = r->req_msgs,
        .response_messages = r->resp_msgs,
    };
    if (wp_metrics_request(&ri) < 0)
        LOG_LIMITED(LOG_WARN, "waypoint::telemetry",
                    "a request to %s was not counted (label sets full or no memory)",
                    r->authority ? r->authority : "-");
    char local[SOCKADDR_STRLEN], remote[SOCKADDR_STRLEN], cluster[320];
    snprintf(cluster, sizeof(cluster), "inbound-vip|%u|http|%s", t->port,
             r->dst_svc ? r->dst_svc->hostname : "");
    struct wp_access a = {
        .start_ms_wall = r->start_wall,
        .method = r->method,
        .path = r->path,
        .protocol = r->protocol,
        .response_code = r->status,
        .response_flags = flags,
        .response_code_details = r->details,
        .bytes_received = r->body_in,
        .bytes_sent = r->body_out,
        .duration_ms = r->duration_ms,
        .upstream_service_time_ms = r->upstream_ms,
        .xff = r->xff,
        .user_agent = r->user_agent,
        .request_id = r->request_id,
        .authority = r->authority,
        .upstream_host = r->upstream_host,
        .upstream_cluster = r->dst_svc ? cluster : NULL,
        .downstream_local = sockaddr_format(&t->local, local, sizeof(local)),
        .downstream_remote = sockaddr_format(&t->peer, remote, sizeof(remote)),
        .route_name = r->route_name,
    };
    if (!log_target_enabled(LOG_INFO, "access")) return;
    char line[WP_ACCESS_LINE_MAX];
    int n = wp_access_format(&a, wp_cfg.access_log_json, line, sizeof(line));
    if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0) {
        /* stdout gone: nothing to tell */
    }
}
