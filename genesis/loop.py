"""Event loop selection: uvloop when it is installed."""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


def use_uvloop() -> bool:
    """Install uvloop's event loop policy if uvloop is importable.

    Returns True when uvloop is now the policy, False otherwise (not installed, or it
    failed to load on this platform). Never raises: an application calls this at start-up
    and must run either way, only slower without uvloop.
    """
    try:
        import uvloop
    except Exception as exc:  # ImportError, or a broken binary wheel (OSError)
        logger.debug("uvloop not available: %s", exc)
        return False
    try:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except Exception as exc:
        logger.warning("uvloop is installed but its policy could not be set: %s", exc)
        return False
    return True
