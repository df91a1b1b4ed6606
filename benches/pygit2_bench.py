"""The libgit2 side of `examples/bench.rs`, through pygit2.

Each command prints one JSON object on stdout; the timings cover only the libgit2 calls, not
starting Python or importing pygit2.

  poll URL DIR ROUNDS    clone URL into DIR (bare), then time ROUNDS no-change fetches
  update DIR URL OLD     fetch URL into the clone in DIR and list the files changed since OLD
  clone URL DIR DEPTH    time a bare clone (DEPTH 0: full history)
"""

import json
import statistics
import sys
import time

import pygit2

REFSPEC = "+refs/heads/main:refs/remotes/origin/main"
TIP = "refs/remotes/origin/main"


def fetch(repo, url):
    repo.remotes.create_anonymous(url).fetch([REFSPEC])


def poll(url, path, rounds):
    repo = pygit2.init_repository(path, bare=True)
    fetch(repo, url)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fetch(repo, url)
        samples.append(time.perf_counter() - started)
    median = statistics.median(samples) * 1e3 if samples else None
    return {"median_ms": median, "rounds": rounds}


def update(path, url, old):
    repo = pygit2.Repository(path)
    started = time.perf_counter()
    fetch(repo, url)
    new = repo.references[TIP].peel(pygit2.Commit)
    diff = repo.diff(repo[old].peel(pygit2.Commit).tree, new.tree)
    changed = [delta.new_file.path for delta in diff.deltas]
    took = time.perf_counter() - started
    return {"ms": took * 1e3, "changes": len(changed), "new": str(new.id)}


def clone(url, path, depth):
    started = time.perf_counter()
    try:
        pygit2.clone_repository(url, path, bare=True, depth=depth)
    except pygit2.GitError as err:
        return {"error": str(err)}
    return {"ms": (time.perf_counter() - started) * 1e3}


def main(argv):
    command = argv[1]
    if command == "poll":
        result = poll(argv[2], argv[3], int(argv[4]))
    elif command == "update":
        result = update(argv[2], argv[3], argv[4])
    elif command == "clone":
        result = clone(argv[2], argv[3], int(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")
    result["libgit2"] = pygit2.LIBGIT2_VERSION
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
