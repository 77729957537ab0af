"""The ``genesis`` command.

- ``genesis consumer module:app [--host H --port P --password S]`` runs a ``Consumer``;
  the connection options given on the command line override the ones in the code.
- ``genesis outbound module:app [--host H --port P]`` runs an ``Outbound`` server, or
  wraps a bare ``async def handler(session)`` in one.
- ``genesis demo [...]`` runs the demo, ``genesis simulator [...]`` the FreeSWITCH simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any

from genesis.consumer import Consumer
from genesis.loop import use_uvloop
from genesis.outbound import Outbound


def load(target: str) -> Any:
    """Import ``package.module:attribute``."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not attribute:
        raise SystemExit(f"genesis: expected module:attribute, got {target!r}")
    sys.path.insert(0, "")
    return getattr(importlib.import_module(module_name), attribute)


def consumer_app(args: argparse.Namespace) -> Consumer:
    app = load(args.target)
    if not isinstance(app, Consumer):
        raise SystemExit(f"genesis: {args.target} is not a genesis.Consumer")
    client = app.protocol
    if args.host is not None:
        client.host = args.host
    if args.port is not None:
        client.port = args.port
    if args.password is not None:
        client.password = args.password
    return app


def outbound_app(args: argparse.Namespace) -> Outbound:
    app = load(args.target)
    if not isinstance(app, Outbound):
        if not callable(app):
            raise SystemExit(f"genesis: {args.target} is neither an Outbound nor a handler")
        app = Outbound(app)
    if args.host is not None:
        app.host = args.host
    if args.port is not None:
        app.port = args.port
    return app


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="genesis", description=__doc__.split("\n\n")[0])
    commands = root.add_subparsers(dest="command", required=True)
    consumer = commands.add_parser("consumer", help="run a Consumer application")
    consumer.add_argument("target", help="module:attribute of a genesis.Consumer")
    consumer.add_argument("--host")
    consumer.add_argument("--port", type=int)
    consumer.add_argument("--password")
    outbound = commands.add_parser("outbound", help="run an Outbound application")
    outbound.add_argument("target", help="module:attribute of an Outbound or a session handler")
    outbound.add_argument("--host")
    outbound.add_argument("--port", type=int)
    commands.add_parser("demo", help="the demo against the embedded simulator", add_help=False)
    commands.add_parser("simulator", help="the FreeSWITCH simulator", add_help=False)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # demo and simulator own their options: hand them everything after the subcommand.
    if argv[:1] == ["demo"]:
        from genesis import demo

        return demo.main(argv[1:])
    if argv[:1] == ["simulator"]:
        from genesis.testing import __main__ as simulator

        simulator.main(argv[1:])
        return 0
    args = parser().parse_args(argv)
    use_uvloop()
    if args.command == "consumer":
        asyncio.run(consumer_app(args).start())
    else:
        asyncio.run(outbound_app(args).start())
    return 0


if __name__ == "__main__":
    sys.exit(main())
