"""The exception hierarchy of Genesis.

Every failure a caller can see is a :class:`GenesisError`. The tree matches
the release users already code against (``ConnectionError > ConnectionLost``
and so on); :class:`ProtocolError` is new: the peer sent bytes that are not
the Event Socket protocol, and the connection that received them closes.
"""

from __future__ import annotations

import builtins
import sys
from enum import Enum
from typing import Any


class GenesisError(Exception):
    """Base class of every error raised by Genesis."""


class ConnectionError(GenesisError):  # the public name users already catch (shadows the builtin)
    """The connection to FreeSWITCH failed or is closing."""


class ConnectionTimeoutError(ConnectionError):
    """Connecting (or authenticating) took longer than the configured timeout."""


class CommandStage(Enum):
    """How far a command got before its connection was lost.

    NOT_SENT: never written, safe to retry. UNCONFIRMED: written but no reply
    arrived, so it may or may not have run. ACCEPTED: FreeSWITCH replied (a
    bgapi job was accepted) but its result never arrived.
    """

    NOT_SENT = "not_sent"
    UNCONFIRMED = "unconfirmed"
    ACCEPTED = "accepted"


class ConnectionLost(ConnectionError):
    """The connection closed while a command was pending."""

    def __init__(
        self, message: str = "connection lost", stage: CommandStage = CommandStage.UNCONFIRMED
    ) -> None:
        super().__init__(message)
        self.stage = stage


class UnconnectedError(GenesisError):
    """An operation needs a connection that was never established."""


class AuthenticationError(GenesisError):
    """FreeSWITCH refused the password (or the ACL refused the client)."""


class ProtocolError(GenesisError):
    """The peer sent bytes that are not valid Event Socket framing.

    ``offset`` is the position in the stream (bytes fed since the last reset)
    where the bad frame starts, or None for a well-formed frame the engine cannot
    place in the conversation (it found no position to report); ``excerpt`` is a
    short, printable excerpt of it. ``messages`` holds the messages the same
    ``Parser.feed()`` call completed before the bad frame, so that none of them is lost.
    """

    def __init__(self, message: str, offset: int | None = 0, excerpt: bytes = b"") -> None:
        self.reason = message
        self.offset = offset
        self.excerpt = excerpt
        self.messages: list[Any] = []
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"{message}{where}: {excerpt[:64]!r}")


class ChannelError(GenesisError):
    """A channel operation failed; ``cause`` holds FreeSWITCH's hangup cause when known."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ChannelNotFound(ChannelError):
    """The channel does not exist (any more) on FreeSWITCH."""


class SessionGoneAway(GenesisError):
    """The outbound session's channel hung up while an operation waited on it."""


if sys.version_info >= (3, 11):

    class TimeoutError(GenesisError, builtins.TimeoutError):  # public name, shadows the builtin
        """A wait exceeded its timeout (also the builtin TimeoutError, which asyncio's is)."""

else:
    # Before 3.11 asyncio's TimeoutError is a class of its own: code catching it around a
    # Genesis wait, as around asyncio.wait_for, must catch ours there too. (Only there does
    # importing the parser alone import asyncio.)
    import asyncio

    class TimeoutError(GenesisError, asyncio.TimeoutError, builtins.TimeoutError):
        """A wait exceeded its timeout (also the builtin TimeoutError and asyncio's)."""


class QueueTimeoutError(TimeoutError):
    """No queue slot became free within the timeout."""


class QueueReleasedError(GenesisError):
    """:meth:`genesis.queue.QueueBackend.release` took an item out of line while its
    caller waited.

    A dialer releases a queued call whose caller hung up, possibly from another task or
    (with Redis) another process; the wait for it ends with this error instead of going
    on for an item no longer in line, or taking a slot nobody wants any more.
    """
