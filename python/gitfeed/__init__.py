"""Follow a git branch and learn exactly what changed.

gitfeed keeps a local clone of each source in a cache directory and sends an event whenever a
source's branch moves (`update`, with every changed file), its health changes (`state`) or
something was left out (`warning`). Sources and events are the same dicts as the JSON of the
command line's config file and output: a source is a dict with the config file's keys, an event
a dict with the CLI's event fields.

    import gitfeed

    with gitfeed.Feed("/var/cache/agent") as feed:
        feed.add({"name": "policies", "url": "https://git.example.org/p.git", "ref": "main"})
        for event in feed:
            if event["type"] == "update":
                ...
                feed.acknowledge(event["source"], event["new"])

Every fetch runs in Rust, on threads of the feed's own, without Python's global lock; a hung or
failing remote costs one attempt deadline and gives back every descriptor and thread it took.
"""

from __future__ import annotations

import asyncio
import json
import os
from types import TracebackType
from typing import Any, AsyncIterator, Dict, Iterator, List, Mapping, Optional, Type, Union

from . import _gitfeed
from ._errors import Error, InvalidInputError, NotFoundError

__all__ = [
    "Error",
    "Event",
    "Feed",
    "InvalidInputError",
    "NotFoundError",
    "acknowledge",
    "acknowledged",
    "read",
    "status",
    "sync_once",
]

__version__: str = _gitfeed.__version__

#: An event: `{"type": "update" | "state" | "warning", "source": ..., ...}`.
Event = Dict[str, Any]
#: A source: the keys of a source in the config file (`name`, `url`, `ref`, `interval`, ...).
Source = Mapping[str, Any]
#: A directory, as a string or a path.
StrPath = Union[str, "os.PathLike[str]"]

# How long one wait of `Feed.stream` holds a thread of the event loop's executor: the longest
# such a thread can outlive a cancelled stream.
_STREAM_WAIT = 0.25


class Feed:
    """Follows sources and hands out their events, in order, from a feed running on one
    thread of its own (and a thread per attempt in flight, at most `concurrent_fetches`).

    Use it as a context manager, or call `close()`: leaving the `with` block stops the feed,
    interrupts attempts in flight and waits for its threads to end.
    """

    def __init__(self, cache_dir: StrPath, *, concurrent_fetches: Optional[int] = None) -> None:
        if concurrent_fetches is not None and concurrent_fetches < 1:
            raise InvalidInputError("concurrent_fetches must be at least 1", "invalid_input", False)
        self._native = _gitfeed.Feed(os.fspath(cache_dir), concurrent_fetches)

    def add(self, source: Source) -> None:
        """Adds a source, or replaces the source of the same name. The source is checked
        before anything touches the network: an invalid one raises `InvalidInputError`
        (a `ValueError`) naming the key."""
        self._native.add(_source_json(source))

    def remove(self, name: str) -> None:
        """Stops following the source `name` and releases it: its delivery state goes, and its
        clone too when no other source reads it (see the README's "The cache"). Raises
        `NotFoundError` for a source the feed does not follow."""
        self._native.remove(name)

    def trigger(self, name: str, commit: Optional[str] = None) -> None:
        """Fetches the source `name` now, cutting a backoff short. With `commit` (a commit a
        webhook announced), nothing is fetched when that commit is already here."""
        self._native.trigger(name, commit)

    def acknowledge(self, source: str, commit: str) -> None:
        """Records that the update of `source` to `commit` (the update's `new`) is applied.
        It is written to the cache before this returns; after a restart the next update
        starts from it. Until then, a restart sends the update again."""
        self._native.acknowledge(source, commit)

    def acknowledged(self, source: str) -> Optional[str]:
        """The commit last acknowledged for `source`, or `None`."""
        return self._native.acknowledged(source)

    def read(self, source: str, commit: str, path: str) -> bytes:
        """The bytes of the file at `path` in `commit` of `source`, read from the cache's
        clone with no worktree, honouring the source's filter and `max_file_size`. Raises
        `NotFoundError` when the commit has no such file (or the filter leaves it out)."""
        return self._native.read(source, commit, path)

    def status(self) -> List[Dict[str, Any]]:
        """The status of each of this feed's sources, as `gitfeed status --json` shows it."""
        statuses: List[Dict[str, Any]] = json.loads(self._native.status())
        return statuses

    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting up to `timeout` seconds (`None`: for as long as it takes).
        `None` when the timeout passes, or when the feed is closed and every event was taken.
        The wait holds no lock of Python's, and Ctrl-C interrupts it."""
        text = self._native.next(timeout)
        return None if text is None else _event(text)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        text = self._native.next(None)
        if text is None:
            raise StopIteration
        return _event(text)

    async def stream(self) -> AsyncIterator[Event]:
        """The events, for `async for`. Waiting never blocks the event loop: it happens
        without Python's lock on a thread of the loop's default executor. Cancelling the
        iteration loses no event; the next taker gets it. Ends when the feed is closed."""
        loop = asyncio.get_running_loop()
        while True:
            text = self._native.try_next()
            if text is not None:
                yield _event(text)
            elif self._native.drained():
                return
            else:
                await loop.run_in_executor(None, self._native.wait, _STREAM_WAIT)

    def close(self) -> None:
        """Stops the feed: attempts in flight are interrupted, and this returns once every
        thread of the feed has ended. Events sent before can still be taken; then iteration
        ends. Calling it again does nothing."""
        self._native.close()

    def __enter__(self) -> "Feed":
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()


def sync_once(cache_dir: StrPath, source: Source) -> Optional[Event]:
    """Runs one attempt for `source` without a feed, within its timeout: the update since the
    commit last acknowledged in this cache, or `None` when nothing moved. Call `acknowledge`
    once it is applied; until then the next call returns the same update."""
    text = _gitfeed.sync_once(os.fspath(cache_dir), _source_json(source))
    return None if text is None else _event(text)


def acknowledge(cache_dir: StrPath, source: Source, commit: str) -> None:
    """Records, without a feed, that `source`'s update to `commit` is applied."""
    _gitfeed.acknowledge(os.fspath(cache_dir), _source_json(source), commit)


def acknowledged(cache_dir: StrPath, source: Source) -> Optional[str]:
    """The commit last acknowledged for `source` in `cache_dir`, or `None`."""
    return _gitfeed.acknowledged(os.fspath(cache_dir), _source_json(source))


def read(cache_dir: StrPath, source: Source, commit: str, path: str) -> bytes:
    """The bytes of the file at `path` in `commit` of `source`'s clone in `cache_dir`."""
    return _gitfeed.read(os.fspath(cache_dir), _source_json(source), commit, path)


def status(cache_dir: StrPath) -> List[Dict[str, Any]]:
    """The status of every source in `cache_dir`, running or not."""
    statuses: List[Dict[str, Any]] = json.loads(_gitfeed.status(os.fspath(cache_dir)))
    return statuses


def _event(text: str) -> Event:
    event: Event = json.loads(text)
    return event


def _source_json(source: Source) -> str:
    """The source as the JSON of a config file's source. Paths may be given as `os.PathLike`;
    any other value JSON cannot hold is refused, naming its key."""
    if not isinstance(source, Mapping):
        raise InvalidInputError(
            f"invalid source: expected a dict of the config file's keys, not {type(source).__name__}",
            "invalid_input",
            False,
        )
    try:
        return json.dumps(dict(source), default=_fspath)
    except (TypeError, ValueError):
        for key, value in source.items():
            try:
                json.dumps({key: value}, default=_fspath)
            except (TypeError, ValueError) as err:
                raise InvalidInputError(
                    f"invalid source: `{key}`: {err}", "invalid_input", False
                ) from None
        raise


def _fspath(value: object) -> str:
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise TypeError(f"a {type(value).__name__} is not a JSON value")
