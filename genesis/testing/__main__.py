"""``python -m genesis.testing``: run the FreeSWITCH simulator as a standalone server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from genesis.testing.server import FreeSwitchSimulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m genesis.testing",
        description="A FreeSWITCH Event Socket simulator listening on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8021)
    parser.add_argument("--password", default="ClueCon")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="HEARTBEAT interval (s)")
    parser.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="DIAL=SECONDS",
        help="declare user/N answering after SECONDS (repeatable), e.g. user/1001=0.5",
    )
    parser.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="EXT=SOCKET",
        help='route an extension to an outbound socket, e.g. "5000=127.0.0.1:9000 async full"',
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with FreeSwitchSimulator(
        host=args.host, port=args.port, password=args.password, heartbeat=args.heartbeat
    ) as fs:
        for spec in args.endpoint:
            dial, _, seconds = spec.partition("=")
            fs.endpoint(dial, answer_after=float(seconds or 0))
        for spec in args.route:
            extension, _, socket = spec.partition("=")
            fs.route(extension, socket=socket)
        # The port line goes to stdout so scripts can wait for it.
        print(f"genesis.testing: FreeSWITCH simulator listening on {fs.host}:{fs.port}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
