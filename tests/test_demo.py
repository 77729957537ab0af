"""The README's main job: the demo runs end to end against the embedded simulator."""

from __future__ import annotations

import subprocess
import sys

from genesis import demo


async def test_short_demo_finishes_every_call_and_counts_events() -> None:
    args = demo.parse_args(["--short", "--calls", "30", "--ivr-calls", "6"])
    stats = await demo.main_async(args)

    assert sum(stats.outcomes.values()) == 36
    assert not stats.errors
    dialer = {cause for (outcome, cause) in stats.outcomes if outcome.startswith("dialer")}
    # The scripted mix (seed 7) must exercise answers and at least two failure causes.
    assert "NORMAL_CLEARING" in dialer and len(dialer) >= 3
    assert stats.events["CHANNEL_ANSWER"] > 0 and stats.events["CHANNEL_HANGUP_COMPLETE"] > 0
    assert "originate (to ring)" in stats.latencies
    summary = demo.render_summary(stats, 1.0)
    assert "hangup cause" in summary and "p99" in summary


def test_demo_command_exits_zero_with_a_summary() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "genesis.demo", "--short", "--calls", "20", "--ivr-calls", "4"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "command latency (ms)" in result.stdout
    assert "dialer: answered" in result.stdout
