"""A deterministic cost model of the consumer at a 1% span ratio, for machines too noisy to time.

The end-to-end bench (``test_consumer_bench.py``) times real sockets; on a shared machine its
traced/untraced ratio moves by several points from one run to the next. This script runs the
same engine path in-process instead (a ``Protocol`` fed 256 KiB chunks of plain.bin's event
frames, a handler reading Event-Name and Unique-ID) under callgrind's cache simulator, with a
last level the size of this machine's L2 (1 MiB), and estimates cycles as

    instructions / 2.5 + 14 x (L1 misses) + 50 x (L2 misses)

The weights are rough; the counts are exact and repeat run to run (``PYTHONHASHSEED=0``), so
two builds compare to the cycle. It prints the untraced cost per event, the extra cost per
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

Run: ``.venv/bin/python bench/cache_model.py`` (about three minutes on two cores).
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
# Runs as (mode, rounds): each cost is the difference of 6 rounds and 3 of its mode.
RUNS = [("off", 3), ("off", 6), ("traced", 3), ("traced", 6)]


def feed(mode: str, rounds: int) -> None:
    """The measured program: ``rounds`` connections' worth of events through one Protocol."""
    import asyncio

    import uvloop
    from capture import event_frames
    from opentelemetry import trace
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from genesis import tracing
    from genesis.protocol.base import Protocol

    block = b"".join(event_frames()) * REPEAT
    chunks = [block[i:i + CHUNK] for i in range(0, len(block), CHUNK)]
    provider = TracerProvider()
    provider.add_span_processor(SpanProcessor())  # receives every span, exports nothing
    if mode == "traced":
        trace.set_tracer_provider(provider)
    tracing.configure(event_span_ratio=RATIO)

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


def main() -> None:
    from capture import event_frames

    events = len(event_frames()) * REPEAT
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        jobs = [pool.submit(_measure, mode, rounds, Path(tmp) / f"{mode}.{rounds}")
                for mode, rounds in RUNS]
        off3, off6, traced3, traced6 = (_cycles(job.result()) for job in jobs)
    untraced = (off6 - off3) / (3 * events)
    extra = ((traced6 - traced3) - (off6 - off3)) / (3 * events * RATIO)
    print(f"untraced: {untraced:,.0f} est. cycles per event")
    print(f"traced at {RATIO:.0%}: {extra:,.0f} est. cycles more per traced event")
    print(f"implied traced/untraced rate: {untraced / (untraced + RATIO * extra):.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1:2] == ["--feed"]:
        feed(sys.argv[2], int(sys.argv[3]))
    else:
        main()
