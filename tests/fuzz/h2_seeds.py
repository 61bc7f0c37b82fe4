#!/usr/bin/python3
"""Writes the seeds of fuzz_h2_server into tests/fuzz/corpus/fuzz_h2_server/: a client's HTTP/2 frames after
the 24-byte preface (the target sends the preface itself), made with python3-h2. The paths are the ones the
target's stream user answers differently ("/hold", "/reset", "/none", anything else). Run from anywhere:
/usr/bin/python3 tests/fuzz/h2_seeds.py"""
import os

import h2.config
import h2.connection

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_h2_server")
PREFACE_LEN = 24


def frames(fn):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    out = c.data_to_send()[PREFACE_LEN:]   # keep the SETTINGS frame
    fn(c)
    return out + c.data_to_send()


def req(path):
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"x"), (b":path", path),
            (b"content-type", b"application/grpc")]


def post_trailers(c):
    c.send_headers(1, req(b"/pkg.Service/Method"))
    c.send_data(1, b"\0\0\0\0\5hello")
    c.send_headers(1, [(b"x-trailer", b"bye")], end_stream=True)


def hold_window(c):
    c.send_headers(1, req(b"/hold"))
    c.send_data(1, b"x" * 16384)
    c.send_data(1, b"y" * 16384)
    c.send_data(1, b"z" * 16384, end_stream=True)
    c.send_headers(3, req(b"/echo"), end_stream=True)


def reset_none_rst_ping_goaway(c):
    c.send_headers(1, req(b"/reset"), end_stream=True)
    c.send_headers(3, req(b"/none"))
    c.send_headers(5, req(b"/x"))
    c.reset_stream(5)
    c.ping(b"12345678")
    c.increment_flow_control_window(65535)
    c.close_connection()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for fn in (post_trailers, hold_window, reset_none_rst_ping_goaway):
        with open(os.path.join(OUT, fn.__name__.replace("_", "-")), "wb") as f:
            f.write(frames(fn))
