"""The examples a user copies: `examples/opal_fetcher.py`, and every Python block of the
README's "Python" section, run against a local remote and checked with `mypy --strict`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Dict, List

import pytest

import gitfeed

from conftest import GIT_ENV, PYTHON_DIR, REPO_ROOT, Remote, Server, run_python

EXAMPLE = PYTHON_DIR / "examples" / "opal_fetcher.py"
# What the README's examples name, and what the tests put in their place.
README_URL = "https://git.example.org/p.git"
README_CACHE = "/var/cache/opal"


def readme_blocks() -> List[str]:
    """The Python blocks of the README's "Python" section, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def line(stream: IO[str], what: str) -> Dict[str, Any]:
    text = stream.readline()
    assert text, f"the example ended before {what}"
    parsed: Dict[str, Any] = json.loads(text)
    return parsed


def test_opal_fetcher_keeps_the_policies_and_restarts_without_losing_them(
    tmp_path: Path, server: Server, remote: Remote
) -> None:
    command = [
        sys.executable,
        str(EXAMPLE),
        server.url(remote),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--interval",
        "100ms",
    ]

    def start() -> "subprocess.Popen[str]":
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env=dict(os.environ, **GIT_ENV)
        )

    fetcher = start()
    assert fetcher.stdout is not None
    first = line(fetcher.stdout, "the first update")
    assert first["full"] is True
    assert first["files"] == ["authz/allow.rego", "data.json"]
    assert first["changed"] == ["authz/allow.rego", "data.json"]

    head = remote.commit(
        {
            "authz/allow.rego": None,
            "authz/deny.rego": b"package authz\n",
            "tenants/a/data.json": b"{}\n",
            "notes.txt": b"not a policy\n",
        },
        "second",
    )
    second = line(fetcher.stdout, "the second update")
    assert second == {
        "commit": head,
        "full": False,
        "changed": ["authz/allow.rego", "authz/deny.rego", "tenants/a/data.json"],
        "files": ["authz/deny.rego", "data.json", "tenants/a/data.json"],
    }
    fetcher.send_signal(signal.SIGTERM)
    assert fetcher.wait(timeout=10) == 0
    fetcher.stdout.close()

    # Restarted, it holds the same files again: listed from the acknowledged commit.
    fetcher = start()
    assert fetcher.stdout is not None
    again = line(fetcher.stdout, "the listing after the restart")
    assert again["full"] is True
    assert again["commit"] == head
    assert again["files"] == second["files"]
    fetcher.send_signal(signal.SIGTERM)
    assert fetcher.wait(timeout=10) == 0
    fetcher.stdout.close()


def test_the_readme_has_python_examples() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 3
    assert any("for event in feed:" in block for block in blocks)
    assert any("feed.stream()" in block for block in blocks)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_a_readme_example_runs(tmp_path: Path, server: Server, remote: Remote, index: int) -> None:
    cache = tmp_path / "cache"
    code = readme_blocks()[index].replace(README_URL, server.url(remote))
    code = code.replace(README_CACHE, str(cache))
    child = run_python(code, tmp_path)
    if "for event in feed" not in code and "feed.stream()" not in code:
        # An example that ends by itself.
        out, errors = child.communicate(timeout=60)
        assert child.returncode == 0, errors
        return
    # A loop that follows the source for ever: it runs until it has applied and acknowledged
    # the remote's commit, then Ctrl-C stops it.
    head = remote.commit({}, "head")
    source = {"name": "policies", "url": server.url(remote), "ref": "main"}
    deadline = time.monotonic() + 60
    while gitfeed.acknowledged(cache, source) != head:
        assert child.poll() is None, child.communicate()[1]
        assert time.monotonic() < deadline, "the example never acknowledged the update"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, errors = child.communicate(timeout=10)
    assert "KeyboardInterrupt" in errors, errors


def test_the_stubs_type_check_against_the_examples(tmp_path: Path) -> None:
    files = [str(EXAMPLE)]
    for index, block in enumerate(readme_blocks()):
        path = tmp_path / f"readme_{index}.py"
        path.write_text(block)
        files.append(str(path))
    # The package itself, then the examples against its stubs.
    for target in (["-p", "gitfeed"], files):
        checked = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *target],
            capture_output=True,
            text=True,
            # Away from the checkout, so that the installed package is what is checked.
            cwd=tmp_path,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
