"""A smart HTTP git server for the tests: `git http-backend` behind a small HTTP server on
127.0.0.1, in a process of its own so that the process under test counts only its own
descriptors and threads, and its lock is never held by the server.

    python gitserver.py ROOT      serves the bare repositories under ROOT; prints the port

`POST /_fault/500` makes every later request answer HTTP 500 until `POST /_fault/none`;
`POST /_fault/silent` makes every later request wait for ever without an answer (a hung
remote: the connection stays open until the client gives up).
Requests (git's included) are counted; `GET /_requests` answers the count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, List, Tuple

ROOT = ""
FAULT = "none"
REQUESTS = 0
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 with keep-alive as git's servers speak it; bodies of unknown length are chunked.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.serve()

    def do_POST(self) -> None:
        self.serve()

    def serve(self) -> None:
        global FAULT, REQUESTS
        body = self.read_body()
        path, _, query = self.path.partition("?")
        if path.startswith("/_fault/"):
            FAULT = path[len("/_fault/") :]
            return self.answer(200, b"ok\n")
        if path == "/_requests":
            with LOCK:
                count = REQUESTS
            return self.answer(200, f"{count}\n".encode())
        with LOCK:
            REQUESTS += 1
        if FAULT == "500":
            return self.answer(500, b"the server is down\n")
        if FAULT == "silent":
            threading.Event().wait()
        self.backend(path, query, body)

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: List[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def backend(self, path: str, query: str, body: bytes) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        backend = subprocess.Popen(
            ["git", "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert backend.stdin is not None and backend.stdout is not None
        backend.stdin.write(body)
        backend.stdin.close()
        status, headers = self.cgi_headers(backend.stdout)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            chunk = backend.stdout.read1(1 << 16)  # type: ignore[attr-defined]
            if not chunk:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")
        backend.wait()

    @staticmethod
    def cgi_headers(stream: IO[bytes]) -> Tuple[int, List[Tuple[str, str]]]:
        status = 200
        headers: List[Tuple[str, str]] = []
        while True:
            line = stream.readline().decode("latin-1").rstrip("\r\n")
            if not line:
                return status, headers
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name, value.strip()))


class Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gives up (a deadline, an interrupted fetch) resets its connection:
        # expected here, and nothing to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def main(argv: List[str]) -> None:
    global ROOT
    ROOT = argv[1]
    server = Server(("127.0.0.1", 0), Handler)
    # Threads of requests that never end must not keep the process from ending.
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
