"""The Genesis demo: a small contact-centre application against the embedded simulator.

Three parts of one application run together, each on its own Event Socket connection, as
they would against a production FreeSWITCH:

- a **dialer** (``Inbound`` + ``Channel.create``) originates calls at a capped call rate and
  concurrency; an answered call hears a prompt and is hung up; busy, unanswered and rejected
  calls are counted by hangup cause;
- an **outbound IVR** (``Outbound``) answers inbound calls routed to extension 5000: a welcome
  prompt, a DTMF menu (``play_and_get_digits``), then ``1`` rings the agents in parallel
  (``RingGroup``) and bridges the caller to the first who answers, ``2`` reads the caller's
  number back (``say``), anything else says goodbye;
- a **consumer** (``Consumer``) counts every event the switch emits.

The switch is ``genesis.testing.FreeSwitchSimulator``, scripted with a fixed random seed so
that every run dials the same mix of answering, busy, silent and failing numbers.

Run it with ``make demo`` (or ``python -m genesis.demo``; ``--short`` for CI).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from genesis._wait import wait_for
from genesis.channel import Channel
from genesis.consumer import Consumer
from genesis.exceptions import ChannelError, GenesisError, TimeoutError
from genesis.group import RingGroup, RingMode
from genesis.inbound import Inbound
from genesis.loop import use_uvloop
from genesis.outbound import Outbound, Session
from genesis.protocol.parser import ESLEvent
from genesis.testing import FreeSwitchSimulator
from genesis.types import ChannelState

T = TypeVar("T")

PASSWORD = "ClueCon"
IVR_EXTENSION = "5000"
RING_TIMEOUT = 2.0
AGENTS = [f"user/20{n:02d}" for n in range(1, 5)]
FAILURE_CAUSES = ("CALL_REJECTED", "UNALLOCATED_NUMBER", "NORMAL_TEMPORARY_FAILURE")


@dataclass
class Stats:
    """What the demo measured; rendered by :func:`render_summary`."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def outcome(self, part: str, outcome: str, cause: str) -> None:
        self.outcomes[(f"{part}: {outcome}", cause)] += 1

    @contextlib.contextmanager
    def timed(self, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.latencies.setdefault(operation, []).append(time.perf_counter() - start)

    async def time(self, operation: str, awaitable: Awaitable[T]) -> T:
        with self.timed(operation):
            return await awaitable

    @property
    def total_events(self) -> int:
        return sum(self.events.values())


def script_switch(fs: FreeSwitchSimulator, numbers: list[str], seed: int) -> None:
    """Give every dialled number a behaviour: mostly answering, some busy, silent or failing."""
    rng = random.Random(seed)
    for number in numbers:
        roll = rng.random()
        if roll < 0.70:
            fs.endpoint(number, answer_after=rng.uniform(0.05, 0.6))
        elif roll < 0.82:
            fs.endpoint(number, busy=True)
        elif roll < 0.92:
            fs.endpoint(number, ring_forever=True)
        else:
            fs.endpoint(number, fail=rng.choice(FAILURE_CAUSES))
    for agent in AGENTS:
        fs.endpoint(agent, answer_after=rng.uniform(0.1, 0.5))


async def dial_one(client: Inbound, number: str, stats: Stats) -> None:
    """One dialer call: originate, wait for the answer, play a prompt, hang up."""
    try:
        channel = await stats.time(
            "originate (to ring)",
            Channel.create(
                client,
                number,
                {"originate_timeout": 1, "origination_caller_id_number": "5551000"},
                timeout=10,
            ),
        )
    except ChannelError as exc:
        stats.outcome("dialer", "failed", exc.cause or "UNKNOWN")
        return
    try:
        await channel.wait(ChannelState.EXECUTE, timeout=RING_TIMEOUT)
    except TimeoutError:
        # With return_ring_ready the originate is over once the leg rings: giving up on an
        # unanswered leg is the dialer's job, as it would be against FreeSWITCH.
        await stats.time("hangup", channel.hangup("ORIGINATOR_CANCEL"))
        stats.outcome("dialer", f"no answer in {RING_TIMEOUT:g} s", "ORIGINATOR_CANCEL")
        return
    if channel.is_gone:
        stats.outcome("dialer", "not answered", channel.hangup_cause or "UNKNOWN")
        return
    await stats.time("playback", channel.playback("ivr/ivr-thank_you_for_calling.wav"))
    await stats.time("hangup", channel.hangup())
    stats.outcome("dialer", "answered", "NORMAL_CLEARING")


async def run_dialer(
    client: Inbound, numbers: list[str], cps: float, concurrency: int, stats: Stats
) -> None:
    """Start one call every ``1/cps`` seconds, never more than ``concurrency`` at once."""
    slots = asyncio.Semaphore(concurrency)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def guarded(number: str) -> None:
        try:
            await dial_one(client, number, stats)
        except GenesisError as exc:
            stats.outcome("dialer", "error", type(exc).__name__)
            stats.errors.append(f"{number}: {exc!r}")
        finally:
            slots.release()

    tasks = []
    for index, number in enumerate(numbers):
        await asyncio.sleep(max(0.0, start + index / cps - loop.time()))
        await slots.acquire()
        tasks.append(asyncio.create_task(guarded(number)))
    await asyncio.gather(*tasks)


def make_ivr(stats: Stats) -> Callable[[Session], Awaitable[None]]:
    """The outbound IVR handler: welcome, menu, then queue to agents or read back."""

    async def ivr(session: Session) -> None:
        channel = session.channel
        caller = str(session.context.get("Caller-Caller-ID-Number", "unknown"))
        try:
            await stats.time("answer", channel.answer())
            await stats.time("playback", channel.playback("ivr/ivr-welcome.wav"))
            await stats.time(
                "play_and_get_digits",
                channel.play_and_get_digits(
                    tries=2, timeout=2000, terminators="#", file="ivr/ivr-menu.wav",
                    minimal=1, maximum=1,
                ),
            )
            choice = channel.digits or ""
            if choice == "1":
                agent = await stats.time(
                    "ring group (to answer)",
                    RingGroup.ring(session, AGENTS, mode=RingMode.PARALLEL, timeout=5),
                )
                if agent is None:
                    stats.outcome("ivr", "no agent", "NO_ANSWER")
                    await channel.hangup("NO_ANSWER")
                    return
                await stats.time("bridge", channel.bridge(agent))
                await asyncio.sleep(0.2)  # the conversation
                await stats.time("hangup", agent.hangup())
                stats.outcome("ivr", "bridged to agent", "NORMAL_CLEARING")
            elif choice == "2":
                await stats.time("say", channel.say(caller, kind="NUMBER", method="iterated"))
                stats.outcome("ivr", "number read back", "NORMAL_CLEARING")
            else:
                stats.outcome("ivr", "no choice", "NORMAL_CLEARING")
            await stats.time("hangup", channel.hangup())
        except GenesisError as exc:
            stats.outcome("ivr", "caller left", type(exc).__name__)

    return ivr


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def render_summary(stats: Stats, elapsed: float) -> str:
    """The closing tables: calls by outcome and cause, events, latency percentiles."""
    lines = ["", f"{'calls':<34}{'hangup cause':<28}{'count':>7}", "-" * 69]
    for (outcome, cause), count in sorted(stats.outcomes.items()):
        lines.append(f"{outcome:<34}{cause:<28}{count:>7}")
    lines.append(f"{'total':<62}{sum(stats.outcomes.values()):>7}")
    lines += ["", f"{'events':<34}{'count':>12}{'per second':>14}", "-" * 60]
    for name, count in stats.events.most_common(8):
        lines.append(f"{name:<34}{count:>12}{count / elapsed:>14.0f}")
    lines.append(f"{'all events':<34}{stats.total_events:>12}{stats.total_events / elapsed:>14.0f}")
    header = f"{'command latency (ms)':<26}{'n':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"
    lines += ["", header, "-" * len(header)]
    for operation, values in sorted(stats.latencies.items()):
        ms = [v * 1000 for v in values]
        lines.append(
            f"{operation:<26}{len(ms):>6}{percentile(ms, 0.5):>9.1f}{percentile(ms, 0.9):>9.1f}"
            f"{percentile(ms, 0.99):>9.1f}{max(ms):>9.1f}"
        )
    lines.append(f"\n{elapsed:.1f} s")
    return "\n".join(lines)


async def show_progress(stats: Stats, planned: int, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        done = sum(stats.outcomes.values())
        elapsed = time.perf_counter() - stats.started
        print(
            f"[{elapsed:5.1f}s] calls {done}/{planned}  events {stats.total_events}"
            f" ({stats.total_events / elapsed:.0f}/s)",
            flush=True,
        )


async def main_async(args: argparse.Namespace) -> Stats:
    stats = Stats()
    numbers = [f"user/1{n:03d}" for n in range(args.calls)]
    async with FreeSwitchSimulator(password=PASSWORD, playback_seconds=args.playback) as fs:
        script_switch(fs, numbers, args.seed)
        ivr = Outbound(make_ivr(stats), "127.0.0.1", 0)
        await ivr.start(block=False)
        host, port = ivr.addresses[0]
        fs.route(IVR_EXTENSION, socket=f"{host}:{port} async full")

        consumer = Consumer(fs.host, fs.port, PASSWORD)

        @consumer.handle("*")
        def count(event: ESLEvent) -> None:
            stats.events[event.name or "?"] += 1

        consuming = asyncio.create_task(consumer.start())
        progress = asyncio.create_task(show_progress(stats, args.calls + args.ivr_calls, 1.0))
        try:
            async with Inbound(fs.host, fs.port, PASSWORD) as client:
                await stats.time("api status", client.api("status"))
                rng = random.Random(args.seed + 1)
                callers = [
                    fs.place_call(
                        IVR_EXTENSION,
                        caller=f"55520{n:03d}",
                        digits=rng.choice(("1", "1", "2", "9")),
                        digit_interval=0.05,
                    )
                    for n in range(args.ivr_calls)
                ]
                inbound_calls = await asyncio.gather(*callers)
                await run_dialer(client, numbers, args.cps, args.concurrency, stats)
                await wait_for(
                    asyncio.gather(*(call.done for call in inbound_calls)), timeout=60
                )
                await asyncio.sleep(0.3)  # let the last HANGUP_COMPLETE/DESTROY events arrive
        finally:
            progress.cancel()
            await consumer.stop()
            await asyncio.gather(consuming, progress, return_exceptions=True)
            await ivr.stop()
    return stats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="genesis demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, help="dialer calls (default 300, short 60)")
    parser.add_argument("--ivr-calls", type=int, help="inbound IVR calls (default 40, short 12)")
    parser.add_argument("--cps", type=float, help="dialer calls per second cap (default 40)")
    parser.add_argument("--concurrency", type=int, default=100, help="dialer concurrent calls cap")
    parser.add_argument("--playback", type=float, help="seconds every prompt lasts (default 0.3)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the call mix")
    parser.add_argument("--short", action="store_true", help="a quick run (CI): 60 + 12 calls")
    args = parser.parse_args(argv)
    # --short changes the defaults only: explicit values still win.
    defaults = (60, 12, 60.0, 0.1) if args.short else (300, 40, 40.0, 0.3)
    for name, default in zip(("calls", "ivr_calls", "cps", "playback"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop_name = "uvloop" if use_uvloop() else "asyncio"
    print(
        f"Genesis demo on {loop_name}: {args.calls} dialer calls at <= {args.cps:g} cps, "
        f"{args.ivr_calls} IVR calls, against the embedded FreeSWITCH simulator",
        flush=True,
    )
    started = time.perf_counter()
    stats = asyncio.run(main_async(args))
    print(render_summary(stats, time.perf_counter() - started))
    planned = args.calls + args.ivr_calls
    finished = sum(stats.outcomes.values())
    if stats.errors:
        print("\nerrors:\n  " + "\n  ".join(stats.errors[:20]), file=sys.stderr)
    if finished != planned or stats.total_events == 0 or stats.errors:
        print(f"demo incomplete: {finished}/{planned} calls finished", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
