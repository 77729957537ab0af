"""A deterministic cost model of the consumer at a 1% span ratio, for machines too noisy to time.

The end-to-end bench (``test_consumer_bench.py``) times real sockets; on a shared machine its
traced/untraced ratio moves by several points from one run to the next. This script runs the
same engine path in-process instead (a ``Protocol`` fed 256 KiB chunks of plain.bin's event
frames, a handler reading Event-Name and Unique-ID) under callgrind's cache simulator, with a
last level the size of this machine's L2 (1 MiB), and estimates cycles as

    instructions / 2.5 + 14 x (L1 misses) + 50 x (L2 misses)

The weights are rough; the counts nearly repeat (``PYTHONHASHSEED=0``; span ids are random
and object addresses vary), the traced figure within about 1%, so builds compare to about
that. It prints the untraced cost per event, the extra cost per
traced event, and the ratio they imply. Each mode runs twice, for 3 and for 6 rounds, and
only the difference counts: the first traced event imports and warms the whole tracing path
(OpenTelemetry's context and span modules, Genesis's event span), a one-time cost that the
end-to-end bench's warm-up round absorbs, and that would otherwise be spread over the
traced events (about a fifth of their figure). Needs valgrind (Debian:
``apt-get install valgrind``).

The model counts instructions as if every path ran at the same speed. On this machine the
untraced path (the parser's compiled loop, reading memory in order) runs faster than that,
and the traced one (Python code cold once per hundred events) slower, so the ratio it
implies is higher than the end-to-end bench's: it compares builds, it does not replace
the bench.

With ``--parts`` it also runs two public configurations that split the traced event's cost
(twice the time): an allowlist that matches no header (a span records only ``event.name``
and ``event.uuid``) and the SDK's ``ALWAYS_OFF`` sampler (Genesis dispatches the traced
event, the SDK decides not to record it). Their differences price the attributes, the
SDK's recorded span, and Genesis's dispatch with the SDK's decision.

Run: ``.venv/bin/python bench/cache_model.py [--parts]`` (about three minutes on two cores).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPEAT = 10  # passes over plain.bin's event frames per round
CHUNK = 256 * 1024
RATIO = 0.01
CACHES = ["--D1=65536,8,64", "--I1=65536,8,64", "--LL=1048576,16,64"]
# Each mode's cost is the difference of its runs of 6 rounds and 3.
MODES = ["off", "traced"]
PART_MODES = ["two-attributes", "sampler-drops"]


def feed(mode: str, rounds: int) -> None:
    """The measured program: ``rounds`` connections' worth of events through one Protocol."""
    import asyncio

    import uvloop
    from capture import event_frames
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from genesis import tracing
    from genesis.protocol.base import Protocol

    block = b"".join(event_frames()) * REPEAT
    chunks = [block[i:i + CHUNK] for i in range(0, len(block), CHUNK)]
    provider = TracerProvider(sampler=ALWAYS_OFF if mode == "sampler-drops" else None)
    provider.add_span_processor(SpanProcessor())  # receives every span, exports nothing
    if mode != "off":
        trace.set_tracer_provider(provider)
    # No header is named this: the allowlist leaves event.name and event.uuid.
    tracing.configure(event_span_ratio=RATIO,
                      event_span_headers=["X-Model-None"] if mode == "two-attributes" else None)

    class Transport(asyncio.Transport):
        def get_extra_info(self, name: str, default: object = None) -> object:
            return ("127.0.0.1", 8021) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes | bytearray | memoryview) -> None:
            pass

    def connection() -> None:
        protocol = Protocol()
        protocol.on("*", lambda event: (event.get("Event-Name"), event.get("Unique-ID")))
        protocol.connection_made(Transport())
        for chunk in chunks:
            protocol.data_received(chunk)
        protocol.connection_lost(None)

    async def main() -> None:
        for _ in range(rounds):
            connection()

    uvloop.run(main())


def _totals(path: Path) -> list[int]:
    """Ir, Dr, Dw, I1mr, D1mr, D1mw, ILmr, DLmr, DLmw of a whole callgrind run."""
    out = subprocess.run(["callgrind_annotate", "--auto=no", str(path)], check=True,
                         capture_output=True, text=True).stdout
    line = next(text for text in out.splitlines() if "PROGRAM TOTALS" in text)
    return [int(n.replace(",", "")) for n in re.sub(r"\([^)]*\)", "", line).split()[:9]]


def _cycles(v: list[int]) -> float:
    return v[0] / 2.5 + 14 * (v[3] + v[4] + v[5]) + 50 * (v[6] + v[7] + v[8])


def _measure(mode: str, rounds: int, out: Path) -> list[int]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(["valgrind", "--tool=callgrind", "--cache-sim=yes", *CACHES,
                    f"--callgrind-out-file={out}", sys.executable, __file__, "--feed", mode,
                    str(rounds)], check=True, env=env, capture_output=True)
    return _totals(out)


def main(parts: bool) -> None:
    from capture import event_frames

    events = len(event_frames()) * REPEAT
    modes = MODES + (PART_MODES if parts else [])
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        jobs = {(mode, rounds): pool.submit(_measure, mode, rounds, Path(tmp) / f"{mode}.{rounds}")
                for mode in modes for rounds in (3, 6)}
        cost = {mode: _cycles(jobs[mode, 6].result()) - _cycles(jobs[mode, 3].result())
                for mode in modes}
    untraced = cost["off"] / (3 * events)
    extra = {mode: (cost[mode] - cost["off"]) / (3 * events * RATIO) for mode in modes[1:]}
    print(f"untraced: {untraced:,.0f} est. cycles per event")
    print(f"traced at {RATIO:.0%}: {extra['traced']:,.0f} est. cycles more per traced event")
    print(f"implied traced/untraced rate: {untraced / (untraced + RATIO * extra['traced']):.3f}")
    if parts:
        print(f"  attributes (traced - two-attributes): "
              f"{extra['traced'] - extra['two-attributes']:,.0f}")
        print(f"  the SDK's recorded span (two-attributes - sampler-drops): "
              f"{extra['two-attributes'] - extra['sampler-drops']:,.0f}")
        print(f"  Genesis's dispatch and the SDK's decision (sampler-drops): "
              f"{extra['sampler-drops']:,.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1:2] == ["--feed"]:
        feed(sys.argv[2], int(sys.argv[3]))
    else:
        main(parts="--parts" in sys.argv[1:])
