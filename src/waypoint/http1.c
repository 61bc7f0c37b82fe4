/* HTTP/1.1 through the waypoint. Until the streaming codec lands (src/http1/codec.h), an HTTP/1.1 client is
 * relayed as bytes to the chosen endpoint, without routes or L7 policy. */
#include "core/log.h"
#include "waypoint/wp.h"

void wp_http1_start(struct wp_tunnel *t, int fd)
{
    LOG_LIMITED(LOG_WARN, "waypoint::http", "HTTP/1.1 to %s is relayed without L7 processing (not supported yet)",
                t->authority);
    wp_tcp_start(t, fd);
}
