"""Waiting for events holds nothing of Python's: an asyncio ticker beside `feed.stream()` stays
on time while a 100 MiB repository is cloned, and Ctrl-C ends `for event in feed` at once."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import List

import gitfeed

from conftest import Remote, Server, git, quick, run_python

TICK = 0.01
MIB = 1 << 20


def test_a_ticker_beside_the_stream_stays_on_time_during_a_large_clone(
    tmp_path: Path, server: Server
) -> None:
    remote = Remote(server.root, "large")
    # Stored without compression, so that making and serving it is quick; the clone still
    # receives, hashes and indexes every byte.
    git("config", "core.compression", "0", cwd=remote.work)
    git("config", "pack.compression", "0", cwd=remote.bare)
    files = {f"assets/{i:03}.bin": os.urandom(MIB) for i in range(100)}
    files["policy.rego"] = b"package p\n"
    new = remote.commit(files, "100 MiB of assets")
    source = quick("large", server.url(remote), timeout="5m")

    async def main() -> List[float]:
        loop = asyncio.get_running_loop()
        lateness: List[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                due = loop.time() + TICK
                await asyncio.sleep(TICK)
                lateness.append(loop.time() - due)

        ticking = asyncio.ensure_future(ticker())
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with gitfeed.Feed(tmp_path / "cache") as feed:
            feed.add(source)
            async for event in feed.stream():
                if event["type"] == "update":
                    assert event["new"] == new
                    assert len(event["changes"]) == 101
                    break
        took = time.monotonic() - started
        done.set()
        await ticking
        print(
            f"clone of 100 MiB: {took:.2f} s; {len(lateness)} ticks, "
            f"at worst {max(lateness) * 1000:.1f} ms late"
        )
        assert took > 0.5, "the clone was too quick to show anything"
        return lateness

    lateness = asyncio.run(main())
    assert max(lateness) < 0.1, f"a tick was {max(lateness) * 1000:.0f} ms late"


def test_ctrl_c_interrupts_iteration_within_a_second(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    script = textwrap.dedent(
        f"""
        import gitfeed
        with gitfeed.Feed({str(tmp_path / "cache")!r}) as feed:
            feed.add({quick("policies", server.url(remote), interval="1h")!r})
            for event in feed:
                print(event["type"], flush=True)
        """
    )
    child = run_python(script, tmp_path)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "update"
    # Now it waits for an event that will not come for an hour.
    time.sleep(0.5)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    _, errors = child.communicate(timeout=10)
    took = time.monotonic() - sent
    assert "KeyboardInterrupt" in errors, errors
    assert child.returncode != 0
    print(f"Ctrl-C to exit: {took * 1000:.0f} ms")
    assert took < 1.0, f"{took:.2f} s from Ctrl-C to exit"
