"""The chunked decoder both legs of the built-in proxy use (pure logic)."""

from __future__ import annotations

import pytest

from agent.proxy.chunked import ChunkedDecoder, ChunkedError, encode_chunk


def _decode(data: bytes, step: int) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder()
    out = b""
    for start in range(0, len(data), step):
        out += b"".join(decoder.feed(data[start:start + step]))
        if decoder.done:
            return out, decoder.tail + data[start + step:]
    raise AssertionError("not done")


def test_bodies_split_anywhere_decode_whole_and_leave_what_follows() -> None:
    """Extensions and trailers are dropped; the bytes after the body are handed back."""
    body = b"5;name=x\r\nhello\r\n1\r\n \r\nA \r\n0123456789\r\n0\r\nTrailer: t\r\n\r\n"
    for step in (1, 2, 3, 7, len(body) + 5):
        assert _decode(body + b"GET /next", step) == (b"hello 0123456789", b"GET /next")
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"


def test_malformed_framing_is_an_error() -> None:
    """Bad sizes, data longer than its size, endless lines and data after the end raise."""
    for bad in (b"zz\r\n", b"-1\r\n", b"\r\n", b"3\r\nabcd\r\n", b"1" * 20 + b"\r\n",
                b"5" + b" " * 9000):
        with pytest.raises(ChunkedError):
            ChunkedDecoder().feed(bad)
    done = ChunkedDecoder()
    done.feed(b"0\r\n\r\n")
    with pytest.raises(ChunkedError):
        done.feed(b"x")
