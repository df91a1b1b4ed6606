"""What the tests share: repositories made with the git CLI, served by `gitserver.py` (smart
HTTP through `git http-backend`, protocol v2) on 127.0.0.1 from a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import pytest

HERE = Path(__file__).resolve().parent
PYTHON_DIR = HERE.parent
REPO_ROOT = PYTHON_DIR.parent

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


def git(*args: str, cwd: Optional[Path] = None) -> str:
    env = dict(os.environ, **GIT_ENV)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


class Remote:
    """A bare repository under the server's root, and a work tree that commits and pushes
    to it."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}.work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def commit(self, files: Mapping[str, Optional[bytes]], message: str = "change") -> str:
        """Writes (or, for `None`, deletes) files, commits and pushes; the new commit's id."""
        for path, content in files.items():
            target = self.work / path
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", "main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)


def run_python(code: str, cwd: Path) -> "subprocess.Popen[str]":
    """`code` in a Python process of its own, with pipes for its output. It runs in `cwd`,
    away from the checkout, whose gitfeed/ has no extension module."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, **GIT_ENV),
    )


class Server:
    """`gitserver.py` serving a directory of bare repositories."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "gitserver.py"), str(root)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    def url(self, remote: Remote) -> str:
        return f"http://127.0.0.1:{self.port}/{remote.name}.git"

    def fault(self, kind: str) -> None:
        """`500`: every request answers HTTP 500; `none`: serve again."""
        self.control("POST", f"/_fault/{kind}")

    def requests(self) -> int:
        return int(self.control("GET", "/_requests"))

    def control(self, method: str, path: str) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return str(answer.read().decode())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    served = Server(root)
    yield served
    served.stop()


@pytest.fixture
def remote(server: Server) -> Remote:
    made = Remote(server.root, "policies")
    made.commit(
        {
            "authz/allow.rego": b"package authz\n\ndefault allow := false\n",
            "data.json": b'{"users": []}\n',
            "README.md": b"# policies\n",
        },
        "first",
    )
    return made


def quick(name: str, url: str, **settings: Any) -> Dict[str, Any]:
    """A source that polls and retries quickly, for tests."""
    source: Dict[str, Any] = {
        "name": name,
        "url": url,
        "ref": "main",
        "interval": "100ms",
        "timeout": "10s",
        "backoff_initial": "10ms",
        "backoff_max": "50ms",
    }
    source.update(settings)
    return source
