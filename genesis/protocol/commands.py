"""Validation and wire formatting of the commands a client writes.

The Event Socket has no escaping: a command is text lines ended by an empty line, and the
server starts a new command at every empty line. A CR or LF smuggled into an argument (a
caller id, a file name, a variable) therefore splits one command into two and shifts every
later reply onto the wrong caller. So every piece of text that becomes a line is checked here,
before a single byte is written, and refused with ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from uuid import uuid4

# execute-app-arg travels as a header up to this size; longer arguments go in a text/plain
# body, which mod_event_socket reads without its per-line limit.
MAX_HEADER_ARG = 1024


def check_line(text: str, what: str) -> str:
    """Return ``text`` if it can be written as (part of) one line, else raise ValueError."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must not contain CR or LF (it would inject a command): {text!r}")
    return text


def encode_command(command: str) -> bytes:
    """The frame of a one-line command: the line, then the empty line that ends it."""
    if not isinstance(command, str):
        raise TypeError(f"command must be str, not {type(command).__name__}")
    check_line(command, "command")
    if not command.strip():
        raise ValueError("command is empty: an empty line is not a command")
    return command.encode() + b"\n\n"


def verb(command: str) -> str:
    """The first word of a command, lower-cased: safe to record (never an argument)."""
    head = command.lstrip().split(" ", 1)[0]
    return head.lower()


def encode_bgapi(command: str, job_uuid: str) -> bytes:
    """``bgapi <command>`` carrying the client-chosen ``Job-UUID`` header."""
    check_line(command, "bgapi command")
    if not command.strip():
        raise ValueError("bgapi command is empty")
    check_line(job_uuid, "Job-UUID")
    return f"bgapi {command}\nJob-UUID: {job_uuid}\n\n".encode()


def split_event_names(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split subscription names into (event names, CUSTOM subclasses).

    ``"*"`` and ``"all"`` mean ALL; ``"CUSTOM sub"`` and any name containing ``::`` (the
    shape of every FreeSWITCH subclass, ``sofia::register``) are CUSTOM subclasses; other
    names are upper-cased event names. Whitespace inside a plain name would be read by the
    server as two names, so it is refused.
    """
    events: list[str] = []
    customs: list[str] = []
    for raw in names:
        name = check_line(raw, "event name").strip()
        if not name:
            raise ValueError("event name is empty")
        if name == "*" or name.upper() == "ALL":
            events.append("ALL")
            continue
        parts = name.split()
        if parts[0].upper() == "CUSTOM" and len(parts) > 1:
            customs.extend(parts[1:])
        elif len(parts) > 1:
            raise ValueError(f"event name must be one word: {raw!r}")
        elif "::" in name:
            customs.append(name)
        else:
            events.append(name.upper())
    return events, customs


def encode_event_command(events: Iterable[str], customs: Iterable[str]) -> bytes:
    """``event plain NAMES [CUSTOM subclasses]``: CUSTOM must come last on the line."""
    words = ["event", "plain"]
    words.extend(e for e in events if e != "CUSTOM")
    custom_list = list(customs)
    if custom_list or "CUSTOM" in events:
        words.append("CUSTOM")
        words.extend(custom_list)
    return (" ".join(words) + "\n\n").encode()


def encode_filter(header: str, value: str, *, delete: bool = False) -> bytes:
    """``filter <Header> <value>`` or ``filter delete <Header> <value>``."""
    check_line(header, "filter header")
    check_line(value, "filter value")
    if not header or " " in header:
        raise ValueError(f"filter header must be one non-empty word: {header!r}")
    if not value.strip():
        raise ValueError("filter value is empty")
    verb_ = "filter delete" if delete else "filter"
    return f"{verb_} {header} {value}\n\n".encode()


def encode_sendmsg(
    command: str,
    application: str | None = None,
    data: str | None = None,
    *,
    lock: bool = False,
    uuid: str | None = None,
    event_uuid: str | None = None,
    headers: Mapping[str, object] | None = None,
) -> tuple[bytes, str | None]:
    """Build a ``sendmsg`` frame; return it with the Event-UUID it carries (execute only).

    Wire, in this order: ``sendmsg[ <uuid>]``, ``call-command``; for execute
    ``execute-app-name``, ``execute-app-arg`` (when data is given), ``Event-UUID`` (the given
    one or a fresh uuid4: FreeSWITCH echoes it as Application-UUID on CHANNEL_EXECUTE and
    CHANNEL_EXECUTE_COMPLETE, the only way to recognise *this* execution's end);
    ``event-lock: true``; for hangup ``hangup-cause``; then the extra headers. An argument
    longer than MAX_HEADER_ARG goes in a ``text/plain`` body instead of a header.
    """
    check_line(command, "call-command")
    if not command.strip() or " " in command.strip():
        raise ValueError(f"call-command must be one word: {command!r}")
    lines = ["sendmsg" if uuid is None else f"sendmsg {check_line(uuid, 'uuid')}"]
    if uuid is not None and (not uuid.strip() or " " in uuid.strip()):
        raise ValueError(f"uuid must be one word: {uuid!r}")
    lines.append(f"call-command: {command}")
    body: bytes | None = None
    if command == "execute":
        if not application:
            raise ValueError("sendmsg execute needs an application")
        lines.append(f"execute-app-name: {check_line(application, 'application')}")
        if data is not None:
            if len(data) > MAX_HEADER_ARG:
                body = check_line(data, "application data").encode()
            else:
                lines.append(f"execute-app-arg: {check_line(data, 'application data')}")
        event_uuid = check_line(event_uuid or str(uuid4()), "Event-UUID")
        lines.append(f"Event-UUID: {event_uuid}")
    else:
        event_uuid = None
        if application is not None:
            check_line(application, "application")
    if lock:
        lines.append("event-lock: true")
    if command == "hangup" and data is not None:
        lines.append(f"hangup-cause: {check_line(data, 'hangup cause')}")
    if headers:
        for name, value in headers.items():
            check_line(name, "header name")
            if not name or ":" in name or " " in name:
                raise ValueError(f"header name must be one word without ':': {name!r}")
            lines.append(f"{name}: {check_line(str(value), f'header {name}')}")
    if body is not None:
        lines.append("content-type: text/plain")
        lines.append(f"content-length: {len(body)}")
        return ("\n".join(lines) + "\n\n").encode() + body, event_uuid
    return ("\n".join(lines) + "\n\n").encode(), event_uuid
