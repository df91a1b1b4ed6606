"""The package as a caller meets it: a feed over smart HTTP, events as dicts, reads, errors."""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

import gitfeed

from conftest import Remote, Server, quick


def next_of(feed: gitfeed.Feed, kind: str, timeout: float = 30) -> Dict[str, Any]:
    """The next event of type `kind`; fails on running out of time."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} event within {timeout} s"
        event = feed.next(timeout=left)
        assert event is not None, f"no {kind} event within {timeout} s"
        if event["type"] == kind:
            return event


def test_updates_list_then_watch_read_and_acknowledge(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    cache = tmp_path / "cache"
    first = remote.commit({}, "nothing new")
    source = quick(
        "policies",
        server.url(remote),
        filter={"extensions": ["rego", "json"]},
        list_on_start=True,
    )
    with gitfeed.Feed(cache) as feed:
        feed.add(source)
        update = next_of(feed, "update")
        assert update["source"] == "policies"
        assert update["url"] == server.url(remote)
        assert update["ref"] == "refs/heads/main"
        assert update["old"] is None
        assert update["new"] == first
        assert update["forced"] is False
        assert [(c["path"], c["kind"]) for c in update["changes"]] == [
            ("authz/allow.rego", "added"),
            ("data.json", "added"),
        ]
        assert feed.read("policies", first, "data.json") == b'{"users": []}\n'
        assert feed.acknowledged("policies") is None
        feed.acknowledge("policies", first)
        assert feed.acknowledged("policies") == first

        second = remote.commit(
            {
                "data.json": b'{"users": ["ann"]}\n',
                "authz/deny.rego": b"package authz\n",
                "README.md": None,
            },
            "second",
        )
        update = next_of(feed, "update")
        assert (update["old"], update["new"]) == (first, second)
        assert [(c["path"], c["kind"]) for c in update["changes"]] == [
            ("authz/deny.rego", "added"),
            ("data.json", "modified"),
        ]
        assert feed.read("policies", second, "data.json") == b'{"users": ["ann"]}\n'
        # The earlier commit stays readable after the reader moved on.
        assert feed.read("policies", first, "data.json") == b'{"users": []}\n'
        feed.acknowledge("policies", second)

        [status] = feed.status()
        assert status["source"] == "policies"
        assert status["acknowledged"] == second

    # A restart lists the whole acknowledged state again (list, then watch).
    with gitfeed.Feed(cache) as feed:
        feed.add(source)
        update = next_of(feed, "update")
        assert update["old"] is None and update["new"] == second
        assert [c["path"] for c in update["changes"]] == [
            "authz/allow.rego",
            "authz/deny.rego",
            "data.json",
        ]


def test_errors_carry_reason_retryable_and_chain(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    cache = tmp_path / "cache"
    with gitfeed.Feed(cache) as feed:
        feed.add(quick("policies", server.url(remote)))
        update = next_of(feed, "update")
        with pytest.raises(gitfeed.NotFoundError) as missing:
            feed.read("policies", update["new"], "no/such/file")
        assert isinstance(missing.value, gitfeed.Error)
        assert isinstance(missing.value, LookupError)
        assert missing.value.reason == "not_found"
        assert "no/such/file" in str(missing.value)
        with pytest.raises(gitfeed.NotFoundError):
            feed.read("nobody", update["new"], "data.json")
        with pytest.raises(gitfeed.NotFoundError) as unknown:
            feed.trigger("nobody")
        assert unknown.value.reason == "not_found"
        with pytest.raises(gitfeed.InvalidInputError) as bad:
            feed.acknowledge("policies", "not-a-commit")
        assert bad.value.reason == "invalid_input"
        assert bad.value.retryable is False
    with pytest.raises(gitfeed.Error) as stopped:
        feed.add(quick("late", server.url(remote)))
    assert stopped.value.reason == "stopped"

    # A refused connection: transient, and the message has the whole chain.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    with pytest.raises(gitfeed.Error) as refused:
        gitfeed.sync_once(cache, quick("down", f"http://127.0.0.1:{port}/p.git"))
    assert refused.value.reason == "connection_refused"
    assert refused.value.retryable is True
    assert f"127.0.0.1:{port}" in str(refused.value)
    assert str(refused.value).count(": ") >= 2, str(refused.value)
    # Exceptions survive pickling (multiprocessing, logging handlers).
    again = pickle.loads(pickle.dumps(refused.value))
    assert (type(again), again.reason, again.retryable, str(again)) == (
        gitfeed.Error,
        "connection_refused",
        True,
        str(refused.value),
    )


@pytest.mark.parametrize(
    "change, key",
    [
        ({"colour": "blue"}, "colour"),
        ({"interval": "5"}, "interval"),
        ({"interval": 5}, "interval"),
        ({"filter": {"extensions": "rego"}}, "filter.extensions"),
        ({"filter": {"shape": []}}, "shape"),
        ({"depth": -1}, "depth"),
        ({"checkout": object()}, "checkout"),
        ({"url": None}, "url"),
        ({"depth": 0}, "depth"),
    ],
)
def test_an_invalid_source_is_a_value_error_naming_the_key(
    tmp_path: Path, change: Dict[str, Any], key: str
) -> None:
    source = dict(quick("p", "http://127.0.0.1:9/p.git"), **change)
    with gitfeed.Feed(tmp_path) as feed:
        with pytest.raises(ValueError) as raised:
            feed.add(source)
    assert isinstance(raised.value, gitfeed.Error)
    assert raised.value.reason == "invalid_input"
    assert raised.value.retryable is False
    assert key in str(raised.value), str(raised.value)
    # The same check without a feed.
    with pytest.raises(gitfeed.InvalidInputError):
        gitfeed.sync_once(tmp_path, source)


def test_a_missing_url_and_a_source_that_is_not_a_dict(tmp_path: Path) -> None:
    with pytest.raises(gitfeed.InvalidInputError, match="url"):
        gitfeed.sync_once(tmp_path, {"name": "p"})
    with pytest.raises(gitfeed.InvalidInputError, match="dict"):
        gitfeed.sync_once(tmp_path, ["p", "http://127.0.0.1:9/p.git"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrent_fetches"):
        gitfeed.Feed(tmp_path, concurrent_fetches=0)


def test_sync_once_acknowledge_and_status_without_a_feed(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    cache = tmp_path / "cache"
    source = quick("policies", server.url(remote), filter={"extensions": ["rego"]})
    update = gitfeed.sync_once(cache, source)
    assert update is not None and update["type"] == "update"
    assert [c["path"] for c in update["changes"]] == ["authz/allow.rego"]
    assert gitfeed.read(cache, source, update["new"], "authz/allow.rego").startswith(
        b"package authz"
    )
    # Unacknowledged: the same update again.
    again = gitfeed.sync_once(cache, source)
    assert again is not None and again["new"] == update["new"]
    gitfeed.acknowledge(cache, source, update["new"])
    assert gitfeed.acknowledged(cache, source) == update["new"]
    assert gitfeed.sync_once(cache, source) is None
    [status] = gitfeed.status(cache)
    assert (status["source"], status["state"], status["acknowledged"]) == (
        "policies",
        "idle",
        update["new"],
    )
    assert gitfeed.status(tmp_path / "nothing-here") == []
    assert gitfeed.__version__.count(".") == 2


def test_next_times_out_and_iteration_ends_with_the_feed(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    feed = gitfeed.Feed(tmp_path)
    feed.add(quick("policies", server.url(remote)))
    assert next_of(feed, "update")["source"] == "policies"
    started = time.monotonic()
    assert feed.next(timeout=0.3) is None
    took = time.monotonic() - started
    assert 0.25 <= took < 2, took
    feed.close()
    feed.close()
    assert list(feed) == []
    assert feed.next() is None


def test_events_sent_before_close_can_still_be_taken(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    feed = gitfeed.Feed(tmp_path)
    feed.add(quick("policies", server.url(remote)))
    # Wait until the update is ready, without taking it.
    feed._native.wait(30)
    feed.close()
    events: List[Dict[str, Any]] = list(feed)
    assert [e["type"] for e in events] == ["update"]


def test_stream_serves_asyncio_and_a_cancelled_wait_loses_nothing(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    async def main() -> None:
        with gitfeed.Feed(tmp_path) as feed:
            # A stream cancelled while it waits: its pending wait may take the event from
            # the channel, and must keep it for the next taker.
            stream = feed.stream()
            waiting = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.1)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            feed.add(quick("policies", server.url(remote)))
            await asyncio.sleep(1)
            async for event in feed.stream():
                assert event["type"] == "update"
                feed.acknowledge(event["source"], event["new"])
                break
            new = remote.commit({"data.json": b"{}\n"}, "more")
            async for event in feed.stream():
                assert event["type"] == "update" and event["new"] == new
                break
            feed.close()
            assert [e async for e in feed.stream()] == []

    asyncio.run(main())
