"""Pure-Python twin of the compiled Event Socket core (``genesis/_parser.pyx``).

The Event Socket speaks HTTP-like frames: a block of ``Name: value`` lines ended by
an empty line, then exactly ``Content-Length`` bytes of body. Events are frames
whose body is itself a serialized event (``text/event-plain``, ``-json`` or
``-xml``), so a plain event has two header blocks and, for BACKGROUND_JOB, two
Content-Length values: the frame's and the inner body's.

The parser is sans-I/O: ``feed()`` takes whatever bytes the transport read and
returns the messages they complete. It never blocks, never buffers past its
limits, and once it has seen bytes that are not the protocol it stays failed:
the stream can no longer be trusted to be in sync, so the connection must close.

This module is the fallback when the extension is not built and the reference
the extension is tested against; both must behave identically (see
docs/architecture.md, "The sans-I/O core").
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import quote_from_bytes, unquote_to_bytes

from genesis.exceptions import ProtocolError

__all__ = [
    "KIND_API_RESPONSE",
    "KIND_AUTH_REQUEST",
    "KIND_COMMAND_REPLY",
    "KIND_DISCONNECT_NOTICE",
    "KIND_EVENT",
    "KIND_LOG",
    "KIND_RUDE_REJECTION",
    "KIND_UNKNOWN",
    "ESLEvent",
    "HeaderFlattener",
    "Parser",
    "encode_value",
    "serialize_event",
    "snake_case",
]

KIND_AUTH_REQUEST: Final = 1
KIND_COMMAND_REPLY: Final = 2
KIND_API_RESPONSE: Final = 3
KIND_EVENT: Final = 4
KIND_LOG: Final = 5
KIND_DISCONNECT_NOTICE: Final = 6
KIND_RUDE_REJECTION: Final = 7
KIND_UNKNOWN: Final = 8

Value = str | list[str]
# A span attribute value as the OpenTelemetry SDK stores it.
Attribute = str | tuple[str, ...]

_KINDS: Final[dict[bytes, int]] = {
    b"auth/request": KIND_AUTH_REQUEST,
    b"command/reply": KIND_COMMAND_REPLY,
    b"api/response": KIND_API_RESPONSE,
    b"text/event-plain": KIND_EVENT,
    b"text/event-json": KIND_EVENT,
    b"text/event-xml": KIND_EVENT,
    b"log/data": KIND_LOG,
    b"text/disconnect-notice": KIND_DISCONNECT_NOTICE,
    b"text/rude-rejection": KIND_RUDE_REJECTION,
}

# An empty line ends a header block; FreeSWITCH writes LF, other peers may write CRLF.
_HEAD_END: Final = re.compile(rb"\n\r?\n")
# The one line shape of a header block: the name runs to the first colon, one space
# after it is dropped, and so is a CR before the LF.
_LINE: Final = re.compile(rb"^([^:\n]*):[ ]?([^\n]*?)\r?$", re.M)
_EMPTY_BLOCK: Final = re.compile(rb"\r?\n")
_NO_COLON: Final = re.compile(rb"^[^:\n]*$", re.M)
# The headers the framer itself needs, found in one scan of the block.
_FRAMING: Final = re.compile(
    rb"^(Content-Length|Content-Type|Event-Name):[ ]?(?P<value>[^\n]*?)\r?$", re.M)
_INNER_LENGTH: Final = re.compile(rb"^Content-Length:[ ]?(?P<value>[^\n]*?)\r?$", re.M)
# The names routing reads: a plain event answers them without checking its other
# lines (see ESLEvent._lookup), as the compiled twin does.
_ROUTED: Final = {
    name: re.compile(rb"^" + name.encode() + rb":[ ]?([^\n]*?)\r?$", re.M)
    for name in ("Event-Name", "Event-Subclass", "Unique-ID")
}

_EXCERPT: Final = 64

# Header names repeat across every event of a connection: decode each spelling once.
_NAMES: dict[bytes, str] = {}
_NAMES_MAX: Final = 8192


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("utf-8", "surrogateescape")
        if len(_NAMES) < _NAMES_MAX:
            _NAMES[raw] = name
    return name


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _split_array(text: str) -> Value:
    # FreeSWITCH writes a multi-valued header as one value, ARRAY::a|:b, and
    # URL-encodes it as a whole, so the split happens after decoding.
    if text.startswith("ARRAY::"):
        return text[7:].split("|:")
    return text


def _decode(raw: bytes, encoded: bool) -> Value:
    if encoded and b"%" in raw:
        # unquote_to_bytes keeps a '%' that is not followed by two hex digits and
        # leaves '+' alone: exactly the never-raising rule the protocol needs.
        raw = unquote_to_bytes(raw)
    return _split_array(raw.decode("utf-8", "surrogateescape"))


def _join(first: Value, second: Value) -> list[str]:
    merged = [first] if isinstance(first, str) else list(first)
    if isinstance(second, str):
        merged.append(second)
    else:
        merged.extend(second)
    return merged


class ESLEvent(MutableMapping[str, Value]):
    """One message of the Event Socket: header names to values, plus an optional body.

    A parsed plain event keeps its raw header block and decodes a value only when
    it is read: routing usually needs two or three of an event's ~80 headers, and
    URL-decoding the rest would be most of the parsing cost. Anything that needs
    every header (iteration, ``len``, ``==``, mutation) decodes them all once.
    Its lines are checked for ``:`` when the first read needs them all (the
    index), so a malformed line fails that read with ProtocolError; a routing
    name (Event-Name, Event-Subclass, Unique-ID) on a single line is read
    without them.
    """

    __slots__ = ("_block", "_decoded", "_encoded", "_full", "_headers", "_index",
                 "_offset", "_strip_length", "content_type", "kind", "raw_body")

    _block: bytes | None
    _index: dict[str, bytes | list[bytes]] | None
    _headers: dict[str, Value]
    _full: bool
    _encoded: bool
    _strip_length: bool
    _decoded: int
    _offset: int
    kind: int
    content_type: str
    raw_body: bytes | None

    def __init__(
        self,
        headers: Mapping[str, Value] | Iterable[tuple[str, Value]] | None = None,
        body: str | bytes | None = None,
    ) -> None:
        self._block = None
        self._index = None
        self._full = True
        self._encoded = False
        self._strip_length = False
        self._offset = 0
        self.kind = KIND_EVENT
        self.content_type = "text/event-plain"
        collected: dict[str, Value] = {}
        if headers is not None:
            pairs = headers.items() if isinstance(headers, Mapping) else headers
            for name, value in pairs:
                _check_value(value)
                if isinstance(value, list):
                    value = list(value)
                prior = collected.get(name)
                collected[name] = value if prior is None else _join(prior, value)
        self._headers = collected
        self._decoded = len(collected)
        self.raw_body = _body_bytes(body)

    # -- lazy access -------------------------------------------------------

    def _build_index(self) -> dict[str, bytes | list[bytes]]:
        index: dict[str, bytes | list[bytes]] = {}
        assert self._block is not None
        if self.kind == KIND_EVENT:
            bad = _NO_COLON.search(self._block) if self._block else None
            if bad is not None:
                raise ProtocolError("event header line without ':'", self._offset,
                                    _bad_line(bad)[:_EXCERPT])
        strip = self._strip_length
        for raw_name, raw_value in _LINE.findall(self._block):
            if strip and raw_name == b"Content-Length":
                continue
            name = _name(raw_name)
            prior = index.get(name)
            if prior is None:
                index[name] = raw_value
            elif isinstance(prior, list):
                prior.append(raw_value)
            else:
                index[name] = [prior, raw_value]
        self._index = index
        return index

    def _lookup(self, name: str) -> Value | None:
        value = self._headers.get(name)
        if value is not None or self._full:
            return value
        index = self._index
        if index is None:
            routed = _ROUTED.get(name) if self.kind == KIND_EVENT else None
            found = routed.findall(self._block or b"") if routed is not None else None
            if found is not None and len(found) < 2:
                raw = found[0] if found else None
            else:
                index = self._build_index()
                raw = index.get(name)
        else:
            raw = index.get(name)
        if raw is None:
            return None
        if isinstance(raw, bytes):
            value = _decode(raw, self._encoded)
        else:
            value = _decode(raw[0], self._encoded)
            for item in raw[1:]:
                value = _join(value, _decode(item, self._encoded))
        self._headers[name] = value
        self._decoded += 1
        return value

    def _materialize(self) -> dict[str, Value]:
        if self._full:
            return self._headers
        index = self._index
        if index is None:
            index = self._build_index()
        # Rebuild in wire order; values read earlier are reused, not decoded again.
        headers: dict[str, Value] = {}
        for name in index:
            value = self._lookup(name)
            assert value is not None
            headers[name] = value
        self._headers = headers
        self._full = True
        self._block = None
        self._index = None
        return headers

    @property
    def decoded(self) -> int:
        """How many header names have had their value decoded so far (a laziness probe)."""
        return self._decoded

    # -- Mapping -----------------------------------------------------------

    def __getitem__(self, name: str) -> Value:
        value = self._lookup(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:
        value = self._lookup(name)
        return default if value is None else value

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if self._full:
            return name in self._headers
        index = self._index
        if index is None:
            index = self._build_index()
        return name in index

    def __iter__(self) -> Iterator[str]:
        return iter(self._materialize())

    def __len__(self) -> int:
        return len(self._materialize())

    def keys(self) -> Any:
        return self._materialize().keys()

    def items(self) -> Any:
        return self._materialize().items()

    def values(self) -> Any:
        return self._materialize().values()

    def __setitem__(self, name: str, value: Value) -> None:
        _check_value(value)
        headers = self._materialize()
        headers[name] = value
        self._decoded = len(headers)

    def __delitem__(self, name: str) -> None:
        del self._materialize()[name]

    def copy(self) -> dict[str, Value]:
        """A plain ``dict`` of the headers (values that are lists are copied too)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._materialize().items()}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ESLEvent):
            return self.raw_body == other.raw_body and self._materialize() == other._materialize()
        if isinstance(other, Mapping):
            return self._materialize() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        headers = self._materialize()
        shown = ", ".join(f"{k!r}: {v!r}" for k, v in list(headers.items())[:4])
        more = f", ... {len(headers) - 4} more" if len(headers) > 4 else ""
        return f"<ESLEvent {self.name or self.content_type!s} {{{shown}{more}}}>"

    # -- body and routing ----------------------------------------------------

    @property
    def body(self) -> str | None:
        """The body as text (UTF-8; invalid bytes survive as lone surrogates)."""
        raw = self.raw_body
        return None if raw is None else raw.decode("utf-8", "surrogateescape")

    @body.setter
    def body(self, value: str | bytes | None) -> None:
        self.raw_body = _body_bytes(value)

    @property
    def name(self) -> str | None:
        """The routing key: Event-Subclass for CUSTOM events, else the last Event-Name."""
        if self.kind != KIND_EVENT:
            return None
        event_name = self._lookup("Event-Name")
        if isinstance(event_name, list):
            event_name = event_name[-1] if event_name else None
        if event_name == "CUSTOM":
            subclass = self._lookup("Event-Subclass")
            if isinstance(subclass, list):
                subclass = subclass[-1] if subclass else None
            if subclass is not None:
                return subclass
        return event_name


def _bad_line(found: re.Match[bytes]) -> bytes:
    # The excerpt is the line as a header: without the CR of a CRLF ending.
    line = found.group()
    return line[:-1] if line.endswith(b"\r") else line


def _check_value(value: object) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return
    raise TypeError(f"header values are str or list[str], not {type(value).__name__}")


def _body_bytes(body: str | bytes | None) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    raise TypeError(f"body must be str, bytes or None, not {type(body).__name__}")


def _lazy(block: bytes, kind: int, content_type: str, encoded: bool,
          strip_length: bool, body: bytes | None) -> ESLEvent:
    event = ESLEvent.__new__(ESLEvent)
    event._block = block
    event._index = None
    event._headers = {}
    event._full = False
    event._encoded = encoded
    event._strip_length = strip_length
    event._decoded = 0
    event._offset = 0
    event.kind = kind
    event.content_type = content_type
    event.raw_body = body
    return event


def _eager(headers: dict[str, Value], content_type: str, body: bytes | None) -> ESLEvent:
    event = ESLEvent.__new__(ESLEvent)
    event._block = None
    event._index = None
    event._headers = headers
    event._full = True
    event._encoded = False
    event._strip_length = False
    event._decoded = len(headers)
    event._offset = 0
    event.kind = KIND_EVENT
    event.content_type = content_type
    event.raw_body = body
    return event


# -- the framer -------------------------------------------------------------


class _Fail(Exception):
    """Internal: a protocol violation at a position inside the current buffer."""

    def __init__(self, reason: str, where: int, excerpt: bytes) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where = where
        self.excerpt = excerpt


def _length(lines: list[re.Match[bytes]], limit: int, what: str, where: int,
            frame: bytes) -> int | None:
    """The value of the Content-Length ``lines`` (matches with a ``value`` group)."""
    if not lines:
        return None
    first = lines[0].group("value")
    for line in lines[1:]:
        if line.group("value") != first:
            # The excerpt is the line that disagrees, as the header reader sees it.
            text = line.group(0)
            raise _Fail(f"two different {what} Content-Length values", where,
                        text[:-1] if text.endswith(b"\r") else text)
    if not first.isdigit():
        # bytes.isdigit() is ASCII-only: '-1', '+1', ' 1' and non-ASCII digits all fail.
        raise _Fail(f"{what} Content-Length is not a decimal number", where, frame)
    length = int(first)
    if length > limit:
        raise _Fail(f"{what} Content-Length {length} exceeds max_body_size {limit}", where, frame)
    return length


class Parser:
    """Incremental Event Socket parser: bytes in, complete messages out.

    ``feed()`` may be called with any chunking of the stream and returns the same
    messages. Memory is bounded by ``max_header_size + max_body_size`` plus the
    last chunk: a header block that never ends fails as soon as it is too long.
    After a ProtocolError the parser stays failed until ``reset()``.
    """

    __slots__ = ("_buf", "_error", "_frame", "_offset", "_scan", "max_body_size",
                 "max_header_size")

    def __init__(self, max_header_size: int = 1 << 20, max_body_size: int = 16 << 20,
                 share: bool = False) -> None:
        # ``share`` (see the compiled twin) changes memory use only; here every message
        # is built from its own slice of the buffer, so there is nothing to share.
        del share
        if max_header_size <= 0 or max_body_size < 0:
            raise ValueError("max_header_size must be > 0 and max_body_size >= 0")
        self.max_header_size = max_header_size
        self.max_body_size = max_body_size
        self._buf = bytearray()
        self._offset = 0
        self._scan = 0
        self._frame: tuple[int, int, bytes, bytes, int, bool] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet part of a complete message."""
        return len(self._buf)

    @property
    def offset(self) -> int:
        """Bytes consumed (complete messages and skipped blank lines) since the last reset."""
        return self._offset

    def reset(self) -> None:
        """Forget buffered bytes and any error; offsets start again at 0."""
        self._buf = bytearray()
        self._offset = 0
        self._scan = 0
        self._frame = None
        self._error = None

    def release(self, messages: list[ESLEvent]) -> None:
        """Let ``messages`` stop sharing the bytes they were framed from (compiled twin:
        see there). Messages here never share them."""

    def feed(self, data: bytes | bytearray | memoryview) -> list[ESLEvent]:
        """Append ``data`` and return every message it completes, in stream order.

        On a protocol violation raise ProtocolError; messages completed earlier in
        the same call are attached to it as ``messages`` so none is lost.
        """
        if self._error is not None:
            failed = self._error
            raise ProtocolError(f"parser failed earlier ({failed.reason}); reset() first",
                                failed.offset, failed.excerpt)
        buf = self._buf
        buf += data
        out: list[ESLEvent] = []
        try:
            pos = self._drain(buf, out)
        except _Fail as fail:
            error = ProtocolError(fail.reason, self._offset + fail.where, fail.excerpt[:_EXCERPT])
            error.messages = out
            self._error = error
            raise error from None
        if pos:
            del buf[:pos]
            self._offset += pos
        return out

    def _drain(self, buf: bytearray, out: list[ESLEvent]) -> int:
        pos = 0
        end = len(buf)
        max_header = self.max_header_size
        while pos < end:
            frame = self._frame
            if frame is None:
                byte = buf[pos]
                if byte == 10:
                    pos += 1
                    continue
                if byte == 13:
                    if pos + 1 == end:
                        break
                    if buf[pos + 1] == 10:
                        pos += 2
                        continue
                found = _HEAD_END.search(buf, pos + self._scan)
                if found is None:
                    if end - pos > max_header:
                        raise _Fail(f"header block exceeds max_header_size {max_header}", pos,
                                    bytes(buf[pos:pos + _EXCERPT]))
                    self._scan = max(0, end - pos - 2)
                    break
                self._scan = 0
                body_start = found.end()
                if body_start - pos > max_header:
                    raise _Fail(f"header block exceeds max_header_size {max_header}", pos,
                                bytes(buf[pos:pos + _EXCERPT]))
                frame = self._head(bytes(buf[pos:found.start()]), pos, body_start - pos)
                self._frame = frame
            head_size, length, block, ctype, kind, encoded = frame
            stop = pos + head_size + (length if length > 0 else 0)
            if stop > end:
                break
            self._frame = None
            body = bytes(buf[pos + head_size:stop]) if length >= 0 else None
            out.append(self._message(block, ctype, kind, encoded, body, pos))
            pos = stop
        return pos

    def _head(self, block: bytes, pos: int,
              head_size: int) -> tuple[int, int, bytes, bytes, int, bool]:
        bad = _NO_COLON.search(block)
        if bad is not None:
            raise _Fail("header line without ':'", pos, _bad_line(bad))
        lengths: list[re.Match[bytes]] = []
        ctype = b""
        has_ctype = False
        event_name = False
        for line in _FRAMING.finditer(block):
            name, value = line.groups()
            if name == b"Content-Length":
                lengths.append(line)
            elif name == b"Content-Type":
                if not has_ctype:
                    ctype = value
                    has_ctype = True
            else:
                event_name = True
        length = _length(lengths, self.max_body_size, "frame", pos, block)
        kind = _KINDS.get(ctype, KIND_UNKNOWN)
        # The outbound connect reply is a serialized CHANNEL_DATA event sent as a
        # command/reply: its values are URL-encoded like any event's.
        encoded = kind == KIND_COMMAND_REPLY and event_name
        return head_size, -1 if length is None else length, block, ctype, kind, encoded

    def _message(self, block: bytes, ctype: bytes, kind: int, encoded: bool,
                 body: bytes | None, pos: int) -> ESLEvent:
        content_type = _text(ctype)
        if kind != KIND_EVENT:
            return _lazy(block, kind, content_type, encoded, False, body)
        payload = body if body is not None else b""
        if ctype == b"text/event-plain":
            event = _plain_event(payload, content_type, pos, self.max_body_size)
            # The stream offset a late ProtocolError (a line without ':') reports.
            event._offset = self._offset + pos
            return event
        if ctype == b"text/event-json":
            return _json_event(payload, content_type, pos)
        return _xml_event(payload, content_type, pos)


def _plain_event(payload: bytes, content_type: str, pos: int, max_body: int) -> ESLEvent:
    # An event without headers serializes to a lone empty line.
    found = _EMPTY_BLOCK.match(payload) or _HEAD_END.search(payload)
    if found is None:
        raise _Fail("plain event without a complete inner header block", pos, payload)
    block = payload[:found.start()]
    # A line without ':' is found by the first read that indexes the lines.
    length = _length(list(_INNER_LENGTH.finditer(block)), max_body, "inner", pos, block)
    rest = len(payload) - found.end()
    if length is None:
        if rest:
            raise _Fail("plain event has bytes after its headers but no inner Content-Length",
                        pos, payload[found.end():])
        body = None
    elif rest != length:
        reason = "truncated" if rest < length else "followed by stray bytes"
        raise _Fail(f"plain event body {reason}: inner Content-Length {length}, {rest} bytes",
                    pos, payload[found.end():])
    else:
        body = payload[found.end():]
    return _lazy(block, KIND_EVENT, content_type, True, length is not None, body)


class _Pairs(list[tuple[str, Any]]):
    """Marks a decoded JSON object: its pairs in order, so duplicate keys survive."""


def _json_event(payload: bytes, content_type: str, pos: int) -> ESLEvent:
    try:
        document = json.loads(payload.decode("utf-8", "surrogateescape"),
                              object_pairs_hook=_Pairs)
    except (ValueError, RecursionError) as exc:
        raise _Fail(f"JSON event does not parse: {exc}", pos, payload) from None
    if type(document) is not _Pairs:
        raise _Fail("JSON event is not an object", pos, payload)
    # FreeSWITCH writes a re-typed event's duplicate headers as duplicate keys;
    # keep them all, as the plain form does.
    headers: dict[str, Value] = {}
    for name, value in document:
        if not (type(value) is str
                or (type(value) is list and all(type(item) is str for item in value))):
            raise _Fail(f"JSON event header {name!r} is not a string or array of strings",
                        pos, payload)
        prior = headers.get(name)
        headers[name] = value if prior is None else _join(prior, value)
    text = headers.pop("_body", None)
    if text is not None and not isinstance(text, str):
        raise _Fail("JSON event _body is not a string", pos, payload)
    body = None if text is None else text.encode("utf-8", "surrogateescape")
    headers.pop("Content-Length", None)
    for name, value in headers.items():
        if isinstance(value, str):
            headers[name] = _split_array(value)
    return _eager(headers, content_type, body)


_XML_EVENT: Final = re.compile(
    rb"\s*<event>\s*<headers>(.*?)</headers>\s*"
    rb"(?:<Content-Length>([^<]*)</Content-Length>\s*)?"
    rb"(?:<body>([^<]*)</body>\s*)?</event>\s*", re.S)
_XML_HEADER: Final = re.compile(rb"\s*(?:<([^\s<>/&]+)>([^<]*)</\1>|<([^\s<>/&]+)\s*/>)")
_XML_ENTITY: Final = re.compile(rb"&(amp|lt|gt|quot|apos|#[0-9]{1,7}|#x[0-9A-Fa-f]{1,6});")
_XML_NAMED: Final = {b"amp": b"&", b"lt": b"<", b"gt": b">", b"quot": b'"', b"apos": b"'"}


def _xml_entity(match: re.Match[bytes]) -> bytes:
    name = match.group(1)
    named = _XML_NAMED.get(name)
    if named is not None:
        return named
    code = int(name[2:], 16) if name[1:2] == b"x" else int(name[1:])
    if code > 0x10FFFF:
        raise ValueError(f"character reference {code} out of range")
    return chr(code).encode("utf-8", "surrogatepass")


def _xml_text(raw: bytes) -> bytes:
    return _XML_ENTITY.sub(_xml_entity, raw) if b"&" in raw else raw


def _xml_event(payload: bytes, content_type: str, pos: int) -> ESLEvent:
    document = _XML_EVENT.fullmatch(payload)
    if document is None:
        raise _Fail("XML event does not parse", pos, payload)
    inner, length_text, body_text = document.groups()
    headers: dict[str, Value] = {}
    at = 0
    size = len(inner)
    try:
        while at < size:
            element = _XML_HEADER.match(inner, at)
            if element is None:
                if inner[at:].strip():
                    raise _Fail("XML event header does not parse", pos, inner[at:])
                break
            at = element.end()
            raw_name = element.group(1) or element.group(3)
            name = _name(raw_name)
            value = _decode(_xml_text(element.group(2) or b""), True)
            prior = headers.get(name)
            headers[name] = value if prior is None else _join(prior, value)
        body: bytes | None = None
        if body_text is not None:
            body = _xml_text(body_text)
            if length_text is not None:
                if not length_text.isdigit():
                    raise _Fail("XML event Content-Length is not a decimal number", pos,
                                length_text)
                length = int(length_text)
                # FreeSWITCH indents the closing </body> after a body ending in a
                # newline: Content-Length says where the real body stops.
                if len(body) < length or body[length:].strip(b" \t"):
                    raise _Fail("XML event body does not match its Content-Length", pos,
                                body[:_EXCERPT])
                body = body[:length]
    except ValueError as exc:
        raise _Fail(f"XML event does not parse: {exc}", pos, payload) from None
    return _eager(headers, content_type, body)


# -- serializer ---------------------------------------------------------------

# FreeSWITCH's switch_url_encode: printable ASCII passes except these; everything
# else (controls, space, bytes above 0x7E) becomes %XX with upper-case hex.
_URL_SAFE: Final = "!$'()*,/"


def encode_value(value: str) -> str:
    """URL-encode a header value the way FreeSWITCH writes event headers.

    Unlike FreeSWITCH, a ``%`` is always encoded (as ``%25``): FreeSWITCH passes
    an existing ``%XX`` through, which makes decoding lossy; a Genesis peer must
    read back exactly what was written.
    """
    return quote_from_bytes(value.encode("utf-8", "surrogateescape"), safe=_URL_SAFE)


def _check_name(name: str, fmt: str) -> None:
    if name in ("Content-Length", "_body"):
        raise ValueError(f"{name!r} is framing, not an event header")
    if fmt == "plain":
        if not name or ":" in name or "\n" in name or "\r" in name:
            raise ValueError(f"header name {name!r} cannot be written as a plain header line")
    elif fmt == "xml" and (not name or _XML_BAD_NAME.search(name)):
        raise ValueError(f"header name {name!r} cannot be written as an XML element name")


_XML_BAD_NAME: Final = re.compile(r"[\s<>/&]")


def _plain_value(name: str, value: Value, fmt: str) -> str:
    if isinstance(value, str):
        if value.startswith("ARRAY::"):
            raise ValueError(f"header {name!r}: a str value starting with 'ARRAY::' "
                             "would read back as a list")
        return value
    if not value:
        raise ValueError(f"header {name!r}: an empty list cannot be written in {fmt} form")
    if any("|:" in item for item in value):
        raise ValueError(f"header {name!r}: list items containing '|:' cannot be written "
                         f"in {fmt} form")
    return "ARRAY::" + "|:".join(value)


def _serialize_plain(event: Mapping[str, Value], body: bytes | None) -> bytes:
    lines = []
    for name, value in event.items():
        _check_name(name, "plain")
        lines.append(f"{name}: {encode_value(_plain_value(name, value, 'plain'))}\n")
    payload = "".join(lines).encode("utf-8", "surrogateescape")
    if body is None:
        return payload + b"\n"
    return payload + b"Content-Length: %d\n\n" % len(body) + body


_JSON_ESCAPES: Final = {i: f"\\u{i:04x}" for i in range(32)}
_JSON_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", 8: "\\b", 12: "\\f",
                      10: "\\n", 13: "\\r", 9: "\\t"})


def _json_string(text: str) -> str:
    # cJSON's escaping: quote, backslash and control characters only; every other
    # byte, non-ASCII included, is written raw.
    return '"' + text.translate(_JSON_ESCAPES) + '"'


def _serialize_json(event: Mapping[str, Value], body: bytes | None) -> bytes:
    parts = []
    for name, value in event.items():
        _check_name(name, "json")
        if isinstance(value, str):
            if value.startswith("ARRAY::"):
                raise ValueError(f"header {name!r}: a str value starting with 'ARRAY::' "
                                 "would read back as a list")
            rendered = _json_string(value)
        else:
            rendered = "[" + ",".join(_json_string(item) for item in value) + "]"
        parts.append(f"{_json_string(name)}:{rendered}")
    if body is not None:
        text = body.decode("utf-8", "surrogateescape")
        parts.append(f'"Content-Length":"{len(body)}","_body":{_json_string(text)}')
    return ("{" + ",".join(parts) + "}").encode("utf-8", "surrogateescape")


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _serialize_xml(event: Mapping[str, Value], body: bytes | None) -> bytes:
    parts = ["<event>\n  <headers>"]
    for name, value in event.items():
        _check_name(name, "xml")
        # FreeSWITCH repeats the element for each item of a multi-valued header;
        # a one-item list would then read back as a str, so it keeps ARRAY:: form.
        items = value if isinstance(value, list) and len(value) > 1 else [
            _plain_value(name, value, "xml")]
        for item in items:
            parts.append(f"\n    <{name}>{_xml_escape(encode_value(item))}</{name}>")
    parts.append("\n  </headers>")
    if body is not None:
        text = _xml_escape(body.decode("utf-8", "surrogateescape"))
        # FreeSWITCH's XML writer indents a closing tag that follows a newline.
        indent = "  " if text.endswith("\n") else ""
        parts.append(f"\n  <Content-Length>{len(body)}</Content-Length>")
        parts.append(f"\n  <body>{text}{indent}</body>")
    parts.append("\n</event>\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


_SERIALIZERS: Final = {"plain": _serialize_plain, "json": _serialize_json, "xml": _serialize_xml}


def serialize_event(event: Mapping[str, Value], fmt: str = "plain",
                    body: str | bytes | None = None) -> bytes:
    """Serialize ``event`` as the complete frame FreeSWITCH sends for format ``fmt``.

    ``fmt`` is ``plain``, ``json`` or ``xml``; the frame includes the outer
    Content-Length and Content-Type. When ``body`` is None and ``event`` is an
    ESLEvent, the event's own body is written. Raises ValueError for a header the
    format cannot carry so that it would read back differently.
    """
    writer = _SERIALIZERS.get(fmt)
    if writer is None:
        raise ValueError(f"unknown event format {fmt!r}: expected plain, json or xml")
    raw_body = _body_bytes(body)
    if raw_body is None and isinstance(event, ESLEvent):
        raw_body = event.raw_body
    payload = writer(event, raw_body)
    return b"Content-Length: %d\nContent-Type: text/event-%s\n\n" % (
        len(payload), fmt.encode()) + payload


# -- tracing attributes ---------------------------------------------------------

_NOT_ALNUM: Final = re.compile(r"[^a-z0-9]")


@functools.lru_cache(maxsize=4096)
def snake_case(name: str) -> str:
    """``Event-Subclass`` -> ``event_subclass``: lower-case, non-[a-z0-9] become ``_``."""
    return _NOT_ALNUM.sub("_", name.lower())


class HeaderFlattener:
    """Turns an event into OpenTelemetry span attributes.

    OpenTelemetry drops attributes past a span's limit (128 by default), and
    building ~80 of them per event costs more than parsing it, so the flattener
    can be limited to an allowlist and always stops at ``max_attributes``. The
    attribute key of each header name (``event.header.<snake_case>``, or None for
    Unique-ID and names outside the allowlist) is computed once per flattener, and
    only recorded values are decoded. Values are what the SDK stores: ``str``, or
    a tuple of ``str`` for ``ARRAY::`` values and repeated headers. Headers whose
    names flatten to the same key (``Foo-Bar`` and ``foo_bar``) are merged into
    one tuple in header order.
    """

    __slots__ = ("_allow", "_keys", "max_attributes")

    def __init__(self, allowlist: Iterable[str] | None = None, max_attributes: int = 128) -> None:
        self._allow: frozenset[str] | None = (
            None if allowlist is None else frozenset(snake_case(name) for name in allowlist))
        self._keys: dict[str, str | None] = {}
        self.max_attributes = max_attributes

    def _key(self, header: str) -> str | None:
        """``event.header.<snake_case>`` for ``header``, or None when it is not recorded."""
        try:
            return self._keys[header]
        except KeyError:
            pass
        key: str | None = None  # Unique-ID is recorded as event.uuid
        if header != "Unique-ID":
            snake = snake_case(header)
            if self._allow is None or snake in self._allow:
                key = "event.header." + snake
        # Header names come from the peer: bound what they can pin in memory.
        if len(self._keys) < 4096:
            self._keys[header] = key
        return key

    def flatten(self, event: ESLEvent) -> dict[str, Attribute]:
        """``event.name``, ``event.uuid``, then ``event.header.<snake_case>`` in wire order."""
        limit = self.max_attributes
        attributes: dict[str, Attribute] = {}
        if limit <= 0:
            return attributes
        name = event.name
        if name is not None:
            attributes["event.name"] = name
        uuid = event.get("Unique-ID")
        if uuid is not None and len(attributes) < limit:
            attributes["event.uuid"] = _attribute(uuid)
        room = limit - len(attributes)
        names: Iterable[str]
        if event._full:
            names = event._headers
        else:
            names = event._index if event._index is not None else event._build_index()
        for header in names:
            key = self._key(header)
            if key is None:
                continue
            old = attributes.get(key)
            if old is None and room <= 0:
                continue
            value = event.get(header)
            if value is None:
                continue
            if old is None:
                attributes[key] = _attribute(value)
                room -= 1
            else:
                attributes[key] = _join_attribute(old, _attribute(value))
        return attributes


def _attribute(value: Value) -> Attribute:
    """A header value as an attribute value: a list becomes a tuple, as the SDK stores it."""
    return tuple(value) if isinstance(value, list) else value


def _join_attribute(old: Attribute, value: Attribute) -> tuple[str, ...]:
    """Two values of one attribute key, in header order, as one tuple."""
    return ((old if isinstance(old, tuple) else (old,))
            + (value if isinstance(value, tuple) else (value,)))
