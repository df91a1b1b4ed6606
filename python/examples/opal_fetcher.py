"""An OPAL-shaped policy fetcher: follows a policy repository, keeps its `.rego` files and its
`data.json` files in memory, and on each update prints the changed paths (what an OPAL server
broadcasts to its clients), then acknowledges the update.

It is an asyncio program, as OPAL's server is: the feed's events arrive through
`feed.stream()`, which never blocks the event loop, and file reads run off the loop.

A restart loses nothing: the source lists on start, so the first update after a start has
`old: None` and lists every file of the commit reached (the acknowledged one when the branch
has not moved), which rebuilds the in-memory store; later updates are incremental. An update
applied but not acknowledged when the process died is sent again.

Run with: python examples/opal_fetcher.py URL [--cache-dir DIR] [--branch main]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Dict, List, Optional

import gitfeed


class PolicyStore:
    """The policy files of one commit, in memory: what OPAL's server hands its clients."""

    def __init__(self) -> None:
        self.files: Dict[str, bytes] = {}
        self.commit: Optional[str] = None

    async def apply(self, feed: gitfeed.Feed, update: gitfeed.Event) -> List[str]:
        """Applies an update and returns the paths it changed."""
        if update["old"] is None:
            # A full listing: the whole state, not a change to the state we hold.
            self.files.clear()
        changed: List[str] = []
        for change in update["changes"]:
            path: str = change["path"]
            if change["kind"] == "deleted":
                self.files.pop(path, None)
            else:
                self.files[path] = await asyncio.to_thread(
                    feed.read, update["source"], update["new"], path
                )
            changed.append(path)
        self.commit = update["new"]
        return changed


async def broadcast(message: Dict[str, object]) -> None:
    """Where OPAL publishes to its clients; here, a line on stdout."""
    print(json.dumps(message), flush=True)


async def follow(url: str, cache_dir: str, branch: str, interval: str) -> None:
    store = PolicyStore()
    source = {
        "name": "policies",
        "url": url,
        "ref": branch,
        "interval": interval,
        # The files an OPAL server serves: Rego policies and data documents.
        "filter": {"extensions": ["rego"], "include": ["data.json"]},
        "list_on_start": True,
    }
    with gitfeed.Feed(cache_dir) as feed:
        feed.add(source)
        async for event in feed.stream():
            if event["type"] == "update":
                changed = await store.apply(feed, event)
                await broadcast(
                    {
                        "commit": event["new"],
                        "full": event["old"] is None,
                        "changed": changed,
                        "files": sorted(store.files),
                    }
                )
                feed.acknowledge(event["source"], event["new"])
            elif event["type"] == "state":
                print(
                    f"{event['source']}: {event['state']} {event.get('error', '')}",
                    file=sys.stderr,
                    flush=True,
                )
            elif event["type"] == "warning":
                print(f"{event['source']}: {event['message']}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url", help="the policy repository")
    parser.add_argument("--cache-dir", default="/var/cache/opal-fetcher")
    parser.add_argument("--branch", default="main")
    parser.add_argument("--interval", default="10s")
    args = parser.parse_args()
    # A service manager stops it with SIGTERM: leave as on Ctrl-C, closing the feed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(follow(args.url, args.cache_dir, args.branch, args.interval))
    except KeyboardInterrupt:
        pass
    except gitfeed.Error as err:
        print(f"opal_fetcher: {err} (reason: {err.reason})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
