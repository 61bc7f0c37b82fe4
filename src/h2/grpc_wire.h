/* gRPC over HTTP/2, the parts that need no connection: status codes, the 5-byte length-prefixed message
 * framing (an incremental decoder and the encoder), grpc-timeout, grpc-message percent-encoding, metadata
 * rules (names, -bin values in base64, reserved names), content-type checks and the mappings from HTTP
 * statuses and RST_STREAM codes to gRPC statuses.
 *
 * Facts from grpc/grpc doc/PROTOCOL-HTTP2.md, doc/statuscodes.md and doc/http-grpc-status-mapping.md; where
 * those leave a choice open (which status a malformed header gets), zmesh answers as grpc-go does
 * (internal/transport/http2_server.go, rpc_util.go). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The status codes, with grpc's names and numbers (grpc/grpc include/grpc/status.h, doc/statuscodes.md). */
enum grpc_status {
    GRPC_STATUS_OK = 0,
    GRPC_STATUS_CANCELLED = 1,
    GRPC_STATUS_UNKNOWN = 2,
    GRPC_STATUS_INVALID_ARGUMENT = 3,
    GRPC_STATUS_DEADLINE_EXCEEDED = 4,
    GRPC_STATUS_NOT_FOUND = 5,
    GRPC_STATUS_ALREADY_EXISTS = 6,
    GRPC_STATUS_PERMISSION_DENIED = 7,
    GRPC_STATUS_RESOURCE_EXHAUSTED = 8,
    GRPC_STATUS_FAILED_PRECONDITION = 9,
    GRPC_STATUS_ABORTED = 10,
    GRPC_STATUS_OUT_OF_RANGE = 11,
    GRPC_STATUS_UNIMPLEMENTED = 12,
    GRPC_STATUS_INTERNAL = 13,
    GRPC_STATUS_UNAVAILABLE = 14,
    GRPC_STATUS_DATA_LOSS = 15,
    GRPC_STATUS_UNAUTHENTICATED = 16,
};
#define GRPC_STATUS_MAX GRPC_STATUS_UNAUTHENTICATED

/* The code's name as grpc spells it ("OK", "DEADLINE_EXCEEDED"); "?" outside the enum. Static string. */
const char *grpc_status_to_str(enum grpc_status s);

/* Parses a received grpc-status value (decimal digits). A value that does not parse, or a number grpc does
 * not define, is UNKNOWN ("Error parsing returned status", doc/statuscodes.md; grpc-core maps codes outside
 * 0..16 to UNKNOWN too). Returns true when v was a valid code. */
bool grpc_status_parse(const char *v, size_t n, enum grpc_status *out);

/* ---- messages: Compressed-Flag (1 byte) + Message-Length (4 bytes, big endian) + Message ---- */

#define GRPC_FRAME_HDR 5
/* Default message size limits, as grpc-core's: 4 MiB received, unlimited sent (callers set both). Istio's
 * ztunnel raises both to 200 MiB for xDS (istio/ztunnel src/xds/client.rs). */
#define GRPC_DEFAULT_MAX_RECV (4u << 20)
#define GRPC_XDS_MAX_MSG (200u << 20)

/* Writes the prefix of a len-byte message into out[0..5). */
void grpc_frame_header(uint8_t out[GRPC_FRAME_HDR], bool compressed, uint32_t len);

/* Checks a message about to be sent against max_send (0 = no limit). Returns GRPC_STATUS_OK, or
 * RESOURCE_EXHAUSTED with grpc's message in err: "grpc: trying to send message larger than max (N vs. M)". */
enum grpc_status grpc_check_send_size(size_t len, uint32_t max_send, char *err, size_t errlen);

/* Incremental decoder of a stream's DATA bytes into messages, over any chunking. A message that arrives
 * whole in one chunk is handed over in place (no copy); otherwise it is collected in a buffer that grows with
 * the bytes received (a peer announcing 200 MiB and sending 5 bytes costs 5 bytes), up to max_len. */
struct grpc_deframer {
    uint32_t max_len;  /* largest message accepted (0 = GRPC_DEFAULT_MAX_RECV) */
    bool encoding_set; /* the peer's grpc-encoding is neither absent nor "identity" */
    uint8_t hdr[GRPC_FRAME_HDR];
    size_t hdr_n; /* prefix bytes collected */
    uint32_t len; /* current message's length, once the prefix is complete */
    uint8_t *buf; /* owned; partial message */
    size_t buf_n, buf_cap;
    uint64_t messages; /* complete messages delivered */
};

/* Receives one complete message (p[0..n), valid during the call only). Returns 0 to go on, non-zero to stop
 * feeding (the rest of the chunk is dropped; the caller ended the call). */
typedef int (*grpc_msg_fn)(void *ud, const uint8_t *p, size_t n);

/* Sets up d (no allocation). max_len 0 means GRPC_DEFAULT_MAX_RECV. */
void grpc_deframer_init(struct grpc_deframer *d, uint32_t max_len);
/* Frees d's buffer; d may be reused after grpc_deframer_init. */
void grpc_deframer_free(struct grpc_deframer *d);
/* Feeds p[0..n), calling on_msg for each complete message. Returns GRPC_STATUS_OK (all bytes consumed, or
 * on_msg asked to stop), or the status the call must end with, with a message in err: RESOURCE_EXHAUSTED for
 * a message over max_len ("grpc: received message larger than max (N vs. M)"), INTERNAL for a compressed
 * flag without a negotiated grpc-encoding or a flag other than 0 and 1 (grpc-go rpc_util.go
 * checkRecvPayload), UNIMPLEMENTED for a compressed message when an encoding was negotiated (zmesh
 * decompresses nothing: "compression mechanism ... not supported", doc/statuscodes.md) and RESOURCE_EXHAUSTED
 * when memory runs out. After an error d must not be fed again. */
enum grpc_status grpc_deframer_feed(struct grpc_deframer *d, const uint8_t *p, size_t n, grpc_msg_fn on_msg,
                                    void *ud, char *err, size_t errlen);
/* The peer ended its side: INTERNAL when a message was cut short (grpc-go: "unexpected EOF"), else OK. */
enum grpc_status grpc_deframer_finish(const struct grpc_deframer *d, char *err, size_t errlen);
/* True while part of a message (prefix or body) has been received. */
bool grpc_deframer_partial(const struct grpc_deframer *d);

/* ---- grpc-timeout: TimeoutValue (1 to 8 digits) TimeoutUnit (H M S m u n) ---- */

/* Longest formatted value ("99999999H") plus the NUL. */
#define GRPC_TIMEOUT_BUFSZ 10

/* Parses v[0..n) into nanoseconds. Returns 0, or -EINVAL for an empty value, no digits, more than 8 digits,
 * anything but digits before the unit, or an unknown unit; servers answer that with INTERNAL
 * ("malformed grpc-timeout", as grpc-go does). 0 is accepted (an expired deadline) like grpc-go and
 * grpc-core do, though the spec says "positive". Values past 2^64 ns (about 5124095 hours) saturate. */
int grpc_timeout_parse(const char *v, size_t n, uint64_t *ns);
/* Formats ns with the finest unit whose value fits in 8 digits, rounding up (a deadline sent is never
 * earlier than the caller's); 0 becomes "1n". buf gets the NUL-terminated text. Returns its length. */
size_t grpc_timeout_format(uint64_t ns, char buf[GRPC_TIMEOUT_BUFSZ]);
/* ns rounded up to whole milliseconds (for loop timers), saturating. */
uint64_t grpc_timeout_ms(uint64_t ns);

/* ---- grpc-message: UTF-8, percent-encoded outside %x20-24 / %x26-7E ---- */

/* Encodes in[0..n) into out (NUL-terminated when cap > 0, truncated to cap-1 at a character boundary).
 * Returns the full encoded length (at most 3n), whatever cap is. */
size_t grpc_message_encode(const char *in, size_t n, char *out, size_t cap);
/* Decodes in[0..n) into out (room for n+1 bytes; NUL-terminated). A '%' not followed by two hex digits is
 * kept as it is: the spec forbids failing on a bad encoding. Returns the decoded length. */
size_t grpc_message_decode(const char *in, size_t n, char *out);

/* ---- metadata (Custom-Metadata) ---- */

/* Header-Name: 1*( 0-9 / a-z / "_" / "-" / "." ), lower-case only (HTTP/2 forbids upper-case names). */
bool grpc_md_name_valid(const char *name, size_t n);
/* ASCII-Value: 1*( %x20-%x7E ); used for what zmesh sends (received values are taken as HTTP allows). */
bool grpc_md_value_valid(const char *v, size_t n);
/* The name ends with "-bin": its value is binary, base64 on the wire. */
bool grpc_md_is_bin(const char *name, size_t n);
/* Names an application may not send as custom metadata: pseudo-headers, every "grpc-*" name (reserved for
 * gRPC, PROTOCOL-HTTP2.md), the call-definition headers the layer writes itself (content-type, te,
 * user-agent) and HTTP/2's forbidden connection headers (connection, keep-alive, proxy-connection,
 * transfer-encoding, upgrade, host). */
bool grpc_md_reserved(const char *name, size_t n);
/* Base64 (RFC 4648 §4) without padding, as the spec says to emit: needs 4*ceil(n/3)+1 bytes of out.
 * Returns the length written (NUL-terminated). */
size_t grpc_b64_encode(const uint8_t *in, size_t n, char *out);
/* Decodes padded or unpadded base64 in[0..n) into out (room for 3*(n/4)+3 bytes). Returns the length, or
 * -EINVAL for a character outside the alphabet, a misplaced '=', or a length of 1 mod 4. A comma-joined
 * list of values must be split by the caller first. */
int grpc_b64_decode(const char *in, size_t n, uint8_t *out);

/* ---- content-type and status mappings ---- */

/* "application/grpc" alone or followed by '+' or ';' (any case), as grpc-go's contentSubtype accepts.
 * sub and sub_n get the subtype after '+' ("proto", "json", or "" when absent); either may be NULL. */
bool grpc_content_type_ok(const char *v, size_t n, const char **sub, size_t *sub_n);
/* The status a client synthesizes for a response without grpc-status, from its HTTP status (grpc/grpc
 * doc/http-grpc-status-mapping.md): 400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404
 * UNIMPLEMENTED, 429/502/503/504 UNAVAILABLE, 431 INTERNAL, anything else (200 included) UNKNOWN. */
enum grpc_status grpc_status_from_http(int http_status);
/* The status for a stream reset with HTTP/2 error code h2 (PROTOCOL-HTTP2.md "Errors"): REFUSED_STREAM is
 * UNAVAILABLE, CANCEL is CANCELLED, ENHANCE_YOUR_CALM RESOURCE_EXHAUSTED, INADEQUATE_SECURITY
 * PERMISSION_DENIED, every other code (NO_ERROR included) INTERNAL. */
enum grpc_status grpc_status_from_h2_error(uint32_t h2);
