"""The bug gitfeed was made for, in Python: a process that follows a remote answering HTTP 500
holds no more descriptors and threads after 500 failed attempts than after the first few, and
gets the update made during the outage once the remote heals."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Callable

import gitfeed

from conftest import Remote, Server, quick

ATTEMPTS = 500


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def settle(count: Callable[[], int], target: int, within: float = 5) -> int:
    """`count()` once it is at most `target`, or its last value after `within` seconds: an
    attempt's thread ends, and a test server closes its side, a moment after the attempt."""
    deadline = time.monotonic() + within
    while True:
        now = count()
        if now <= target or time.monotonic() > deadline:
            return now
        time.sleep(0.01)


def least(count: Callable[[], int], within: float = 0.2) -> int:
    """The least `count()` seen over `within` seconds: attempts come and go meanwhile."""
    deadline = time.monotonic() + within
    seen = count()
    while time.monotonic() < deadline:
        seen = min(seen, count())
        time.sleep(0.001)
    return seen


def test_500_failed_attempts_leak_nothing_and_the_update_arrives(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    before = (fds(), threads())
    server.fault("500")
    source = quick("policies", server.url(remote), backoff_initial="1ms", backoff_max="4ms")
    feed = gitfeed.Feed(tmp_path / "cache")
    feed.add(source)

    failures = 0
    baseline = None
    while failures < ATTEMPTS:
        event = feed.next(timeout=30)
        assert event is not None, f"no event after {failures} failures"
        assert event["type"] == "state", event
        assert event["state"] == "backoff", event
        assert event["reason"] == "server_error", event
        failures += 1
        assert event["attempt"] == failures
        if failures == 5:
            # The feed's own thread and whatever the first attempts set up for good.
            baseline = (least(fds), least(threads))
    assert baseline is not None
    assert server.requests() >= ATTEMPTS
    assert settle(fds, baseline[0]) <= baseline[0], "descriptors grew"
    assert settle(threads, baseline[1]) <= baseline[1], "threads grew"
    print(
        f"after 5 failures: {baseline[0]} fds, {baseline[1]} threads; "
        f"after {ATTEMPTS}: {fds()} fds, {threads()} threads"
    )

    during = remote.commit({"during-outage.rego": b"package outage\n"}, "during the outage")
    server.fault("none")
    update = None
    healthy = False
    while update is None or not healthy:
        event = feed.next(timeout=30)
        assert event is not None, "nothing after the remote healed"
        if event["type"] == "update":
            update = event
        elif event["type"] == "state":
            assert event["state"] in ("backoff", "idle"), event
            healthy = event["state"] == "idle"
    assert update["new"] == during
    assert "during-outage.rego" in [c["path"] for c in update["changes"]]

    feed.close()
    assert settle(fds, before[0]) == before[0], "descriptors left after close"
    assert settle(threads, before[1]) == before[1], "threads left after close"
    assert threading.active_count() == 1
