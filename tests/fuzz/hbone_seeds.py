#!/usr/bin/python3
"""Writes the seeds of fuzz_hbone_server into tests/fuzz/corpus/fuzz_hbone_server/: a client's HTTP/2 frames
after the 24-byte preface (the target sends the preface itself), made with python3-h2 with header validation
off, as HBONE's plain CONNECT needs. Run from anywhere: /usr/bin/python3 tests/fuzz/hbone_seeds.py"""
import os

import h2.config
import h2.connection

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "fuzz_hbone_server")
PREFACE_LEN = 24


def frames(fn):
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, validate_inbound_headers=False, header_encoding=None))
    c.initiate_connection()
    out = c.data_to_send()[PREFACE_LEN:]   # keep the SETTINGS frame
    fn(c)
    return out + c.data_to_send()


def connect_data(c):
    c.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080")])
    c.send_data(1, b"hello")
    c.end_stream(1)


def get_400(c):
    c.send_headers(1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"), (b":authority", b"x")],
                   end_stream=True)


def two_streams_rst_ping_goaway(c):
    c.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:8080")])
    c.send_headers(3, [(b":method", b"CONNECT"), (b":authority", b"[fd00::1]:80")])
    c.reset_stream(1)
    c.ping(b"12345678")
    c.increment_flow_control_window(65535)
    c.close_connection()


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for fn in (connect_data, get_400, two_streams_rst_ping_goaway):
        with open(os.path.join(OUT, fn.__name__.replace("_", "-")), "wb") as f:
            f.write(frames(fn))
