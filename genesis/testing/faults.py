"""Fault injection: the failures a client must survive, on demand.

Each fault is armed by a test and fires once, on the next frame (or reply) that any
connection of the simulator writes; ``clear()`` disarms everything.
"""

from __future__ import annotations


class Faults:
    """Armed faults; reachable as ``fs.faults``."""

    def __init__(self) -> None:
        self.cut_next_frame = False
        self.stall_seconds = 0.0
        self.garbage_bytes: bytes | None = None
        self.reply_delay = 0.0
        self.replies_to_drop = 0

    def close_mid_frame(self) -> None:
        """Write only the first half of the next frame, then close the connection."""
        self.cut_next_frame = True

    def stall(self, seconds: float) -> None:
        """Stop writing for ``seconds`` before the next frame (commands still queue up)."""
        self.stall_seconds = seconds

    def garbage(self, data: bytes = b"\x00\xffnot an ESL frame\n\n") -> None:
        """Write ``data`` just before the next frame."""
        self.garbage_bytes = data

    def delay_replies(self, seconds: float) -> None:
        """Delay every reply by ``seconds`` until cleared (events are not delayed)."""
        self.reply_delay = seconds

    def drop_replies(self, count: int = 1) -> None:
        """Never send the next ``count`` replies (the commands still run)."""
        self.replies_to_drop = count

    def clear(self) -> None:
        """Disarm every fault."""
        self.cut_next_frame = False
        self.stall_seconds = 0.0
        self.garbage_bytes = None
        self.reply_delay = 0.0
        self.replies_to_drop = 0
