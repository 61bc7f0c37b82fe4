#!/usr/bin/python3
"""Writes the seeds of fuzz_grpc_server into tests/fuzz/corpus/fuzz_grpc_server/ (a client's HTTP/2 frames
after the 24-byte preface, which the target sends itself) and of fuzz_grpc_wire into
tests/fuzz/corpus/fuzz_grpc_wire/ (chunk byte, limit byte, then bytes), made with python3-h2.
Run from anywhere: /usr/bin/python3 tests/fuzz/grpc_seeds.py"""
import os

import h2.config
import h2.connection

HERE = os.path.dirname(os.path.abspath(__file__))
PREFACE_LEN = 24


def frames(fn):
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, validate_inbound_headers=False, header_encoding=None))
    c.initiate_connection()
    out = c.data_to_send()[PREFACE_LEN:]   # keep the SETTINGS frame
    fn(c)
    return out + c.data_to_send()


def msg(b, flag=0):
    return bytes([flag]) + len(b).to_bytes(4, "big") + b


def hdrs(path, **extra):
    h = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"x"),
         (b"content-type", b"application/grpc"), (b"te", b"trailers")]
    return h + [(k.encode(), v.encode()) for k, v in extra.items()]


def unary(c):
    c.send_headers(1, hdrs(b"/t.S/Echo", **{"grpc-timeout": "5S", "authorization": "Bearer x",
                                              "trace-bin": "AAEC"}))
    c.send_data(1, msg(b"hello"), end_stream=True)


def chat_push(c):
    c.send_headers(1, hdrs(b"/t.S/Chat"))
    c.send_data(1, msg(b"a") + msg(b"P"))
    c.send_headers(3, hdrs(b"/t.S/Hold", **{"grpc-timeout": "1m"}))
    c.send_data(1, msg(b"b"), end_stream=True)


def bad_requests(c):
    c.send_headers(1, hdrs(b"/t.S/Nope"), end_stream=True)
    c.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/t.S/Echo"), (b":authority", b"x")],
                   end_stream=True)
    c.send_headers(5, hdrs(b"/t.S/Echo", **{"grpc-timeout": "1x"}), end_stream=True)
    c.send_headers(7, hdrs(b"/t.S/Echo"))
    c.send_data(7, msg(b"z", flag=1) + msg(b"") , end_stream=True)
    c.send_headers(9, hdrs(b"/t.S/Echo"))
    c.send_data(9, b"\x00\x00\x00\x20\x00abc", end_stream=True)
    c.reset_stream(9)


if __name__ == "__main__":
    out = os.path.join(HERE, "corpus", "fuzz_grpc_server")
    os.makedirs(out, exist_ok=True)
    for fn in (unary, chat_push, bad_requests):
        with open(os.path.join(out, fn.__name__.replace("_", "-")), "wb") as f:
            f.write(frames(fn))
    out = os.path.join(HERE, "corpus", "fuzz_grpc_wire")
    os.makedirs(out, exist_ok=True)
    seeds = {
        "three-messages": bytes([3, 1]) + msg(b"abc") + msg(b"") + msg(b"0123456789"),
        "compressed": bytes([0, 1]) + msg(b"x", flag=1),
        "timeout": bytes([7, 0]) + b"99999999H",
        "message": bytes([1, 0]) + b"caf%C3%A9 100%25 %zz",
        "base64": bytes([1, 0]) + b"Zm9vYmE=",
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
