"""The Event Socket parser, compiled when available.

``genesis._parser`` (Cython) is used unless it is not built or the environment sets
``GENESIS_NO_EXTENSIONS=1``; ``genesis._parser_py`` is its pure-Python twin with
identical behaviour. ``IMPLEMENTATION`` says which one is active.
"""

from __future__ import annotations

import os
from enum import IntEnum
from typing import TYPE_CHECKING

from genesis.exceptions import ProtocolError

__all__ = [
    "IMPLEMENTATION",
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
    "MessageKind",
    "Parser",
    "encode_value",
    "parse_headers",
    "serialize_event",
    "snake_case",
]

if TYPE_CHECKING:
    # mypy checks against the twin it can read; both export the same names.
    from genesis._parser_py import (
        KIND_API_RESPONSE,
        KIND_AUTH_REQUEST,
        KIND_COMMAND_REPLY,
        KIND_DISCONNECT_NOTICE,
        KIND_EVENT,
        KIND_LOG,
        KIND_RUDE_REJECTION,
        KIND_UNKNOWN,
        ESLEvent,
        HeaderFlattener,
        Parser,
        encode_value,
        serialize_event,
        snake_case,
    )

    IMPLEMENTATION: str
else:
    # Every public name except this module's own comes from the twin (both export them all).
    _OWN_NAMES = ("IMPLEMENTATION", "MessageKind", "parse_headers")
    _TWIN_NAMES = [name for name in __all__ if name not in _OWN_NAMES]

    def _load_twin():
        if os.environ.get("GENESIS_NO_EXTENSIONS") != "1":
            try:
                from genesis import _parser

                return _parser, "compiled"
            except ImportError:
                pass
        from genesis import _parser_py

        return _parser_py, "python"

    _twin, IMPLEMENTATION = _load_twin()
    globals().update({name: getattr(_twin, name) for name in _TWIN_NAMES})
    del _twin, _load_twin



class MessageKind(IntEnum):
    """What a parsed message is, from its frame's Content-Type (``ESLEvent.kind``)."""

    AUTH_REQUEST = KIND_AUTH_REQUEST
    COMMAND_REPLY = KIND_COMMAND_REPLY
    API_RESPONSE = KIND_API_RESPONSE
    EVENT = KIND_EVENT
    LOG = KIND_LOG
    DISCONNECT_NOTICE = KIND_DISCONNECT_NOTICE
    RUDE_REJECTION = KIND_RUDE_REJECTION
    UNKNOWN = KIND_UNKNOWN


def parse_headers(text: str) -> ESLEvent:
    """Parse one block of ``Name: value`` lines into an ESLEvent (compatibility API).

    Values are URL-decoded, as the previous release did, and ``ARRAY::`` values
    and repeated names become lists. Blank lines are ignored; a line without
    ``:`` raises ProtocolError. The result is a user-built event
    (``kind == KIND_EVENT``); ``Content-Length`` is kept as an ordinary header.
    """
    frame = text.encode("utf-8", "surrogateescape").replace(b"\r\n", b"\n").strip(b"\n")
    while b"\n\n" in frame:
        frame = frame.replace(b"\n\n", b"\n")
    if not frame:
        return ESLEvent()
    # Framed as a plain event so that the parser applies exactly the same rules;
    # Content-Length is renamed on the way in because inside an event it is framing.
    marker = b"X-Genesis-Content-Length"
    frame = frame.replace(b"\nContent-Length:", b"\n" + marker + b":")
    if frame.startswith(b"Content-Length:"):
        frame = marker + frame[len(b"Content-Length"):]
    payload = frame + b"\n\n"
    parser = Parser(max_header_size=len(payload) + 64, max_body_size=len(payload) + 64)
    wire = b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(payload) + payload
    try:
        (parsed,) = parser.feed(wire)
    except ProtocolError as exc:
        raise ProtocolError(f"header block does not parse: {exc.reason}", 0,
                            exc.excerpt) from None
    headers = [("Content-Length" if k == marker.decode() else k, v) for k, v in parsed.items()]
    return ESLEvent(headers)
