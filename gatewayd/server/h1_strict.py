"""HTTP/1.1 request framing as strict as Granian's parser (hyper and httparse), for the Hypercorn engine.

Hypercorn parses HTTP/1.1 with h11, which accepts what hyper refuses: obs-fold (joined into the
value), control characters in field values, `HTTP/1.2`, `Content-Length: 5, 5` and repeated
Content-Length lines, Transfer-Encoding on HTTP/1.0, chunk sizes up to 2^80, unbounded chunk
extensions, and a chunk line ended by a bare LF (where it then waits for ever). It also passes on a
request with both Content-Length and Transfer-Encoding with both fields, and keeps the connection open
after it. Both engines must answer each of these alike (RFC 9112), so `StrictConnection` checks the
raw bytes before h11 reads them:

- a request head: request line `method SP target SP HTTP/1.0|HTTP/1.1`; field names are tokens
  followed at once by `:`; no obs-fold; no control characters but HTAB in values; no bare CR;
  Content-Length only digits (on several lines, only the same number, which hyper and h11 both
  merge into one); Transfer-Encoding's last coding `chunked` (else 400,
  RFC 9112 section 6.3), no other coding (501), and none in HTTP/1.0 (400, section 6.1). A bare LF
  ending a line is accepted, as hyper accepts it (RFC 9112 section 2.2 allows either);
- a request with both Content-Length and Transfer-Encoding is read as chunked, as h11 and hyper
  both do, and is handed on without its Content-Length and with `Connection: close`, so that the
  connection closes after the response (RFC 9112 section 6.1), as hyper does;
- bytes after a request that closes its connection are dropped, as hyper drops them;
- chunked bodies: a chunk line ends in CRLF, its size fits 64 bits, and the extensions of a body
  add up to 16 KiB at most (hyper's limits); trailer lines as strict as the head's.

A refusal raises h11's LocalProtocolError with the status to answer, which Hypercorn sends through
`_H11Protocol._send_error_response` as the gateway's JSON error. Checks are pure functions of bytes.
"""

from __future__ import annotations

import re

import h11
from h11._readers import READERS, ChunkedReader
from h11._state import CLIENT, IDLE, MUST_CLOSE, SEND_BODY

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but HTAB
_HEAD_END = re.compile(rb"\n\r?\n")  # h11's own end of a head (a bare LF is a line end too)
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,20})[ \t]*(;.*)?")
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\n"
MAX_CHUNK_EXTENSIONS = 16 * 1024  # hyper's CHUNKED_EXTENSIONS_LIMIT, over a whole body
MAX_CHUNK_LINE = MAX_CHUNK_EXTENSIONS + 64  # waiting longer than this for a chunk line's end is refused


class Refused(h11.LocalProtocolError):
    """A request the strict reading refuses; `error_status_hint` is the status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message, error_status_hint=status)


def _lines(block: bytes) -> list[bytes]:
    """The lines of a head or trailer section (without its blank line), each without its CRLF or LF."""
    lines = block.split(b"\n")
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if b"\r" in line:
            raise Refused("a bare CR in the request head")
        out.append(line)
    return out


def check_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(lower-case name, value) of each field line; raises Refused for obs-fold, a malformed name,
    whitespace before the colon, or a control character in a value."""
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            raise Refused("obs-fold (a field line starting with whitespace) is not accepted")
        match = _FIELD.fullmatch(line)
        if match is None:
            raise Refused("a malformed header field line")
        value = match[2]
        if _CTL.search(value):
            raise Refused("a control character in a header value")
        fields.append((match[1].lower(), value))
    return fields


def check_head(head: bytes) -> bool:
    """Check a request head (through its blank line). Raises Refused; returns whether the request
    has both Content-Length and Transfer-Encoding (to be read as chunked, then the connection closed)."""
    lines = _lines(head[: _HEAD_END.search(head).start()])
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        raise Refused("a malformed request line, or an HTTP version other than 1.0 and 1.1")
    length = None
    codings: list[bytes] = []
    for name, value in check_fields(lines[1:]):
        if name == b"content-length":
            if not value.isdigit() or (length is not None and value != length):
                raise Refused("Content-Length must be one number (repeated, only with the same value)")
            length = value
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
    if codings:
        if request_line[3] == b"0":
            raise Refused("an HTTP/1.0 request cannot have a Transfer-Encoding")
        if codings[-1] != b"chunked":
            raise Refused("Transfer-Encoding must end with chunked")
        if len(codings) > 1:
            raise Refused("the request's Transfer-Encoding is not supported", 501)
    return bool(codings) and length is not None


def _idle_reader(reader):
    """h11's reader of a request head, with `check_head` first and CL+TE handed on as chunked, closing."""

    def read(buf):
        end = _HEAD_END.search(buf._data)  # h11's ReceiveBuffer: the bytes not read yet, from index 0
        if end is None:
            return reader(buf)  # not whole yet (h11 bounds its size and spots obvious garbage)
        if buf._data.startswith(_H2_PREFACE):
            return reader(buf)  # HTTP/2 with prior knowledge: Hypercorn switches protocol on this "request"
        both = check_head(bytes(buf._data[: end.end()]))
        event = reader(buf)
        if both and event is not None:
            headers = [(n, v) for n, v in event.headers if n != b"content-length"] + [(b"connection", b"close")]
            event = h11.Request(method=event.method, target=event.target, headers=headers, http_version=event.http_version)
        return event

    return read


def _ignore_rest(buf) -> None:
    """What comes after a request that closes the connection is dropped, as hyper drops it (h11
    would call it a protocol error and answer 400 before the request's own response)."""
    buf.maybe_extract_at_most(len(buf))
    return None


class StrictChunkedReader(ChunkedReader):
    """h11's chunked body reader, with each chunk line and the trailer section checked first."""

    def __init__(self) -> None:
        super().__init__()
        self._extensions = 0

    def __call__(self, buf):
        data = buf._data  # h11's ReceiveBuffer: the bytes not read yet, from index 0 (not copied here)
        if self._reading_trailer:
            if not data.startswith((b"\r\n", b"\n")):
                found = _HEAD_END.search(data)
                if found is None:
                    return None
                check_fields(_lines(bytes(data[: found.start()])))
        elif self._bytes_in_chunk == 0 and len(data) > len(self._bytes_to_discard):
            start = len(self._bytes_to_discard)  # a chunk's CRLF h11 has still to read, then the next chunk line
            end = data.find(b"\n", start, start + MAX_CHUNK_LINE)
            if end < 0:
                if len(data) - start >= MAX_CHUNK_LINE:
                    raise Refused("a chunk line too long")
                return None
            if end == start or data[end - 1] != 0x0D:
                raise Refused("a chunk line must end with CRLF")
            match = _CHUNK_SIZE.fullmatch(bytes(data[start : end - 1]))
            if match is None or int(match[1], 16) >= 1 << 64:
                raise Refused("an invalid chunk size")
            if match[2]:
                self._extensions += len(match[2])
                if self._extensions > MAX_CHUNK_EXTENSIONS or b"\r" in match[2]:
                    raise Refused("chunk extensions too long, or malformed")
                if match.end(1) != match.start(2):  # "5 ;x": RFC 9112 allows BWS there, h11 does not
                    del data[start + match.end(1) : start + match.start(2)]
                    buf._next_line_search = 0
        return super().__call__(buf)


_STRICT_BODY = dict(READERS[SEND_BODY], chunked=StrictChunkedReader)


class StrictConnection(h11.Connection):
    """h11's server connection, reading requests through the checks above."""

    def _get_io_object(self, role, event, io_dict):
        if io_dict is READERS and role is CLIENT:
            state = self._cstate.states[role]
            if state is IDLE:
                return _idle_reader(READERS[(CLIENT, IDLE)])
            if state is MUST_CLOSE:
                return _ignore_rest
            if state is SEND_BODY:
                return super()._get_io_object(role, event, {**READERS, SEND_BODY: _STRICT_BODY})
        return super()._get_io_object(role, event, io_dict)
