"""gitfeed's Python package beside pygit2 used the way OPAL's `GitPolicyFetcher` uses it: a
class-level cache of `Repository` handles, and each poll a `remote.fetch()` run on the asyncio
loop's default executor, with no deadline.

Each figure comes from a Python process of its own, against a policy repository served by
`git http-backend` (python/tests/gitserver.py) on 127.0.0.1:

  failures   descriptors and threads after the first healthy fetch, then after N fetches
             answered HTTP 500
  hung       descriptors and threads 10 s into an outage where the server accepts and never
             answers, polling every 200 ms; then whether polling recovers when it answers again
  poll       the median time of a no-change poll, in process
  memory     resident memory of a process following S repositories, after the first fetch of
             each and a few no-change polls

Run with: benches/python [--failures N] [--sources S] [--polls R] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "python" / "tests" / "gitserver.py"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


# --- what the children measure ---------------------------------------------------------------


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def memory_kib() -> Dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def requests(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_requests", timeout=10) as answer:
        return int(answer.read())


def fault(port: int, kind: str) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_fault/{kind}", method="POST", data=b""
    )
    urllib.request.urlopen(request, timeout=10).read()


class OpalFetcher:
    """The shape of OPAL's `GitPolicyFetcher`: a clone per repository under a base directory,
    its `pygit2.Repository` kept in a class-level dict, each poll a fetch on the loop's
    default executor."""

    repos: Dict[str, Any] = {}

    def __init__(self, url: str, base: Path) -> None:
        self.url = url
        self.path = str(base / url.rsplit("/", 1)[1])

    def _repo(self) -> Any:
        import pygit2

        repo = OpalFetcher.repos.get(self.path)
        if repo is None:
            if os.path.exists(self.path):
                repo = pygit2.Repository(self.path)
            else:
                repo = pygit2.clone_repository(self.url, self.path, bare=True)
            OpalFetcher.repos[self.path] = repo
        return repo

    def _fetch(self) -> Optional[str]:
        repo = self._repo()
        repo.remotes["origin"].fetch()
        return str(repo.references["refs/heads/main"].peel().id)

    async def poll(self) -> Optional[str]:
        return await asyncio.get_running_loop().run_in_executor(None, self._fetch)


def pygit2_failures(url: str, port: int, work: Path, n: int) -> Dict[str, Any]:
    fetcher = OpalFetcher(url, work)

    async def main() -> Dict[str, Any]:
        await fetcher.poll()
        healthy = {"fds": fds(), "threads": threads()}
        fault(port, "500")
        failed = 0
        for _ in range(n):
            try:
                await fetcher.poll()
            except Exception:
                failed += 1
        fault(port, "none")
        return {"healthy": healthy, "failed": failed, "after": {"fds": fds(), "threads": threads()}}

    return asyncio.run(main())


def gitfeed_failures(url: str, port: int, work: Path, n: int) -> Dict[str, Any]:
    import gitfeed

    with gitfeed.Feed(work / "cache") as feed:
        feed.add(policies(url, interval="1h", backoff_initial="1ms", backoff_max="4ms"))
        assert expect(feed, "update")["type"] == "update"
        healthy = {"fds": fds(), "threads": threads()}
        fault(port, "500")
        feed.trigger("policies")
        failed = 0
        while failed < n:
            event = expect(feed, "state")
            if event["state"] == "backoff":
                failed += 1
        after = {"fds": least(fds), "threads": least(threads)}
        fault(port, "none")
        return {"healthy": healthy, "failed": failed, "after": after}


def pygit2_hung(url: str, port: int, work: Path, seconds: float) -> Dict[str, Any]:
    fetcher = OpalFetcher(url, work)

    async def main() -> Dict[str, Any]:
        await fetcher.poll()
        healthy = {"fds": fds(), "threads": threads()}
        fault(port, "silent")
        polls: List[asyncio.Future[Optional[str]]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            polls.append(asyncio.ensure_future(fetcher.poll()))
            await asyncio.sleep(0.2)
        during = {"fds": fds(), "threads": threads()}
        fault(port, "none")
        # The server answers again: does a new poll get through within 10 s?
        try:
            await asyncio.wait_for(fetcher.poll(), 10)
            recovered = True
        except asyncio.TimeoutError:
            recovered = False
        finished = sum(1 for poll in polls if poll.done())
        return {
            "healthy": healthy,
            "during": during,
            "after": {"fds": fds(), "threads": threads()},
            "polls": len(polls),
            "polls_ended": finished,
            "recovered_within_10s": recovered,
        }

    loop = asyncio.new_event_loop()
    outcome = loop.run_until_complete(main())
    # Fetches that never return hold the executor's threads: the process cannot shut its
    # loop down cleanly, so report and leave.
    print(json.dumps(outcome), flush=True)
    os._exit(0)


def gitfeed_hung(url: str, port: int, work: Path, seconds: float) -> Dict[str, Any]:
    import gitfeed

    with gitfeed.Feed(work / "cache") as feed:
        feed.add(
            policies(
                url, interval="200ms", timeout="2s", backoff_initial="200ms", backoff_max="200ms"
            )
        )
        expect(feed, "update")
        healthy = {"fds": fds(), "threads": threads()}
        fault(port, "silent")
        failed = 0
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            event = feed.next(timeout=left)
            if event is not None and event["type"] == "state" and event["state"] == "backoff":
                failed += 1
        during = {"fds": fds(), "threads": threads()}
        fault(port, "none")
        feed.trigger("policies")
        started = time.monotonic()
        recovered = False
        while time.monotonic() - started < 10:
            event = feed.next(timeout=10 - (time.monotonic() - started))
            if event is not None and event["type"] == "state" and event["state"] == "idle":
                recovered = True
                break
        return {
            "healthy": healthy,
            "during": during,
            "after": {"fds": least(fds), "threads": least(threads)},
            "polls": failed,
            "polls_ended": failed,
            "recovered_within_10s": recovered,
        }


def pygit2_poll(url: str, port: int, work: Path, rounds: int) -> Dict[str, Any]:
    fetcher = OpalFetcher(url, work)
    fetcher._fetch()
    samples = []
    before = requests(port)
    for _ in range(rounds):
        started = time.perf_counter()
        fetcher._fetch()
        samples.append(time.perf_counter() - started)
    per_poll = (requests(port) - before) / rounds
    return {"median_ms": statistics.median(samples) * 1e3, "requests": per_poll}


def gitfeed_poll(url: str, port: int, work: Path, rounds: int) -> Dict[str, Any]:
    import gitfeed

    source = policies(url)
    cache = work / "cache"
    update = gitfeed.sync_once(cache, source)
    assert update is not None
    gitfeed.acknowledge(cache, source, update["new"])
    samples = []
    before = requests(port)
    for _ in range(rounds):
        started = time.perf_counter()
        assert gitfeed.sync_once(cache, source) is None
        samples.append(time.perf_counter() - started)
    per_poll = (requests(port) - before) / rounds
    return {"median_ms": statistics.median(samples) * 1e3, "requests": per_poll}


def gitfeed_feed_poll(url: str, port: int, work: Path, seconds: int) -> Dict[str, Any]:
    """A running feed's no-change polls, back to back (a 1 ms interval): the time each takes,
    from how many the server saw in `seconds`."""
    import gitfeed

    # How many requests a no-change poll makes, counted on one made by hand.
    source = policies(url, interval="1ms")
    update = gitfeed.sync_once(work / "counted", source)
    assert update is not None
    gitfeed.acknowledge(work / "counted", source, update["new"])
    before = requests(port)
    assert gitfeed.sync_once(work / "counted", source) is None
    per_poll = requests(port) - before

    with gitfeed.Feed(work / "cache") as feed:
        feed.add(source)
        event = expect(feed, "update")
        feed.acknowledge(event["source"], event["new"])
        time.sleep(0.5)
        before = requests(port)
        time.sleep(seconds)
        polls = (requests(port) - before) / per_poll
    return {"each_ms": seconds * 1e3 / polls, "polls": polls}


def pygit2_memory(url: str, port: int, work: Path, sources: int) -> Dict[str, Any]:
    import pygit2  # noqa: F401

    base = memory_kib()["VmRSS"]
    fetchers = [OpalFetcher(f"{url[: -len('.git')]}{i}.git", work) for i in range(sources)]

    async def main() -> None:
        for _ in range(3):
            await asyncio.gather(*(fetcher.poll() for fetcher in fetchers))

    asyncio.run(main())
    return dict(memory_kib(), base=base, repositories=len(OpalFetcher.repos))


def gitfeed_memory(url: str, port: int, work: Path, sources: int) -> Dict[str, Any]:
    import gitfeed

    base = memory_kib()["VmRSS"]
    with gitfeed.Feed(work / "cache") as feed:
        for i in range(sources):
            feed.add(
                {
                    "name": f"p{i}",
                    "url": f"{url[: -len('.git')]}{i}.git",
                    "ref": "main",
                    "interval": "500ms",
                }
            )
        updated = set()
        while len(updated) < sources:
            event = expect(feed, "update")
            feed.acknowledge(event["source"], event["new"])
            updated.add(event["source"])
        # A few rounds of no-change polls.
        time.sleep(2)
        return dict(memory_kib(), base=base, repositories=len(updated))


def policies(url: str, **settings: str) -> Dict[str, Any]:
    """The followed source: `main` of `url`, with `settings`."""
    return dict({"name": "policies", "url": url, "ref": "main"}, **settings)


def expect(feed: Any, kind: str) -> Dict[str, Any]:
    while True:
        event = feed.next(timeout=120)
        if event is None:
            raise SystemExit(f"no {kind} event within 120 s")
        if event["type"] == kind:
            result: Dict[str, Any] = event
            return result
        if event["type"] == "state" and event["state"] == "failed":
            raise SystemExit(f"the source failed: {event}")


def least(count: Any, within: float = 0.2) -> int:
    """The least count over `within` seconds: attempt threads come and go meanwhile."""
    deadline = time.monotonic() + within
    seen: int = count()
    while time.monotonic() < deadline:
        seen = min(seen, count())
        time.sleep(0.001)
    return seen


MEASURES = {
    ("pygit2", "failures"): pygit2_failures,
    ("gitfeed", "failures"): gitfeed_failures,
    ("pygit2", "hung"): pygit2_hung,
    ("gitfeed", "hung"): gitfeed_hung,
    ("pygit2", "poll"): pygit2_poll,
    ("gitfeed", "poll"): gitfeed_poll,
    ("gitfeed", "feed-poll"): gitfeed_feed_poll,
    ("pygit2", "memory"): pygit2_memory,
    ("gitfeed", "memory"): gitfeed_memory,
}


def child(argv: List[str]) -> None:
    impl, measure, url, port, work, amount = argv
    run = MEASURES[(impl, measure)]
    result = run(url, int(port), Path(work), float(amount) if measure == "hung" else int(amount))
    print(json.dumps(result), flush=True)


# --- the parent: a repository, a server, a child per figure -----------------------------------


def git(*args: str, cwd: Optional[Path] = None) -> None:
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, env=dict(os.environ, **GIT_ENV)
    )


def make_repository(root: Path, sources: int) -> None:
    """A policy repository of 200 Rego files and a data document, and `sources` copies."""
    work = root / "work"
    git("init", "--quiet", "--initial-branch=main", str(work))
    for i in range(200):
        path = work / "policies" / f"team{i % 10}" / f"rule{i}.rego"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"package team{i % 10}.rule{i}\n\ndefault allow := false\n" * 8)
    (work / "data.json").write_text(json.dumps({"users": [f"u{i}" for i in range(500)]}))
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "policies", cwd=work)
    git("clone", "--quiet", "--bare", str(work), str(root / "served" / "policies.git"))
    for i in range(sources):
        shutil.copytree(root / "served" / "policies.git", root / "served" / f"policies{i}.git")


def measure(impl: str, what: str, url: str, port: int, root: Path, amount: float) -> Dict[str, Any]:
    work = Path(tempfile.mkdtemp(dir=root))
    done = subprocess.run(
        [sys.executable, __file__, "child", impl, what, url, str(port), str(work), str(amount)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"{impl} {what} failed:\n{done.stderr}")
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--failures", type=int, default=500)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--hung-seconds", type=float, default=10)
    parser.add_argument("--quick", action="store_true", help="small figures, to keep it working")
    args = parser.parse_args()
    if args.quick:
        args.failures, args.sources, args.polls, args.hung_seconds = 20, 3, 5, 2

    import gitfeed
    import pygit2

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "served").mkdir()
        make_repository(root, args.sources)
        server = subprocess.Popen(
            [sys.executable, str(SERVER), str(root / "served")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(server.stdout.readline())
            url = f"http://127.0.0.1:{port}/policies.git"
            print(
                f"gitfeed {gitfeed.__version__} beside pygit2 {pygit2.__version__} "
                f"(libgit2 {pygit2.LIBGIT2_VERSION}), Python {sys.version.split()[0]}\n"
            )
            print("| measure | pygit2, as OPAL's fetcher | gitfeed |")
            print("|---|---|---|")
            rows = [
                (
                    "failures",
                    args.failures,
                    lambda r: (
                        f"{r['failed']} failed: {r['healthy']['fds']} → {r['after']['fds']} fds, "
                        f"{r['healthy']['threads']} → {r['after']['threads']} threads"
                    ),
                ),
                (
                    "hung",
                    args.hung_seconds,
                    lambda r: (
                        f"{r['polls']} polls, {r['polls_ended']} ended; {r['healthy']['fds']} → "
                        f"{r['during']['fds']} fds, {r['healthy']['threads']} → "
                        f"{r['during']['threads']} threads; healed: "
                        f"{'polls again' if r['recovered_within_10s'] else 'stuck'}, "
                        f"{r['after']['fds']} fds, {r['after']['threads']} threads"
                    ),
                ),
                (
                    "poll",
                    args.polls,
                    lambda r: f"{r['median_ms']:.1f} ms, {r['requests']:g} HTTP requests",
                ),
                (
                    "feed-poll",
                    3,
                    lambda r: f"{r['each_ms']:.1f} ms each ({r['polls']:g} polls in 3 s)",
                ),
                (
                    "memory",
                    args.sources,
                    lambda r: (
                        f"{r['repositories']} repositories: RSS {r['VmRSS'] / 1024:.1f} MiB "
                        f"(peak {r['VmHWM'] / 1024:.1f}, {r['base'] / 1024:.1f} before)"
                    ),
                ),
            ]
            names = {
                "failures": f"{args.failures} fetches answered HTTP 500",
                "hung": f"{args.hung_seconds:g} s of a remote that never answers",
                "poll": f"no-change poll over HTTP (median of {args.polls}; gitfeed: sync_once)",
                "feed-poll": "no-change polls of a running feed, back to back",
                "memory": f"{args.sources} sources followed",
            }
            for what, amount, show in rows:
                cells = [
                    show(measure(impl, what, url, port, root, amount))
                    if (impl, what) in MEASURES
                    else "–"
                    for impl in ("pygit2", "gitfeed")
                ]
                print(f"| {names[what]} | {cells[0]} | {cells[1]} |", flush=True)
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2:])
    else:
        main()
