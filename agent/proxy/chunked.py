"""Chunked transfer coding (RFC 9112 section 7.1) for the built-in proxy: decode, encode.

Both legs use it: the client's chunked request bodies and the apps' chunked responses. The
proxy always decodes and re-encodes (chunk extensions and trailers are dropped), so the next
hop sees one canonical framing whatever the sender wrote: a lenient reading (spaces around a
chunk size, a bare LF) cannot make two hops disagree on where a message ends.
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "ChunkedDecoder", "ChunkedError", "encode_chunk"]

MAX_LINE = 8 * 1024  # a chunk-size line or one trailer line
_MAX_TRAILERS = 64 * 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIZE, _DATA, _DATA_END, _TRAILERS = range(4)


class ChunkedError(ValueError):
    """The chunked framing is malformed."""


def encode_chunk(piece: bytes) -> bytes:
    """One chunk carrying ``piece`` (which must not be empty: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(piece), piece)


class ChunkedDecoder:
    """Decodes one chunked body fed in arbitrary pieces.

    ``feed`` returns the data decoded from what it was given (possibly nothing). Once the last
    chunk and the trailer section are read, ``done`` is true and ``tail`` holds the bytes fed
    after the end of the body (the start of the next message); feeding more is an error.
    Raises ``ChunkedError`` on malformed framing or lines longer than ``MAX_LINE``.
    """

    __slots__ = ("_line", "_remaining", "_state", "_trailers", "done", "tail")

    def __init__(self) -> None:
        self._state = _SIZE
        self._remaining = 0
        self._line = b""
        self._trailers = 0
        self.done = False
        self.tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            raise ChunkedError("data after the end of a chunked body")
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end:
            if self._state == _DATA:
                take = min(self._remaining, end - pos)
                out.append(data if take == end and pos == 0 else data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_END
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > MAX_LINE:
                    raise ChunkedError("chunk line too long")
                break
            line = self._line + data[pos:newline]
            self._line = b""
            pos = newline + 1
            if len(line) > MAX_LINE:
                raise ChunkedError("chunk line too long")
            self._line_done(line[:-1] if line.endswith(b"\r") else line)
            if self.done:
                self.tail = data[pos:]
                break
        return out

    def _line_done(self, line: bytes) -> None:
        if self._state == _DATA_END:
            if line:
                raise ChunkedError("chunk data longer than its size")
            self._state = _SIZE
        elif self._state == _SIZE:
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
                raise ChunkedError("malformed chunk size")
            size = int(size_text, 16)
            if size:
                self._remaining = size
                self._state = _DATA
            else:
                self._state = _TRAILERS
        elif line:  # a trailer field: dropped, but bounded
            self._trailers += len(line)
            if self._trailers > _MAX_TRAILERS:
                raise ChunkedError("trailer section too large")
        else:
            self.done = True
