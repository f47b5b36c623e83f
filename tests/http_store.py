"""A loopback HTTP server over a directory, for tests of datasets read by URL.

It can misbehave on purpose: `fail_first` requests of each .tar path are answered by closing the
connection (half of them after sending part of the body, a truncated transfer), and `status_first`
requests get an HTTP status (503) instead. Every request is counted per path.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Handler(SimpleHTTPRequestHandler):
    server: StoreServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet in tests
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        store = self.server
        with store.lock:
            store.requests[self.path] += 1
            seen = store.requests[self.path]
        if self.path.endswith(".tar") and seen <= store.fail_first:
            with store.lock:
                store.failures += 1
            if seen % 2:
                self.close_connection = True  # reset: no response at all
                self.connection.shutdown(2)
                return
            # A truncated transfer: the full length announced, half the body sent.
            size = os.path.getsize(self.translate_path(self.path))
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(self.translate_path(self.path), "rb") as handle:
                self.wfile.write(handle.read(size // 2))
            self.close_connection = True
            return
        if self.path.endswith(".tar") and seen <= store.fail_first + store.status_first:
            with store.lock:
                store.failures += 1
            self.send_error(503, "try again")
            return
        super().do_GET()


class StoreServer(ThreadingHTTPServer):
    """Serves `root` on 127.0.0.1 at a free port; use as a context manager."""

    daemon_threads = True

    def __init__(self, root: Path, fail_first: int = 0, status_first: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
        self.root, self.fail_first, self.status_first = Path(root), fail_first, status_first
        self.requests: Counter[str] = Counter()
        self.failures = 0
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request, client_address) -> None:
        """A client that stops reading early (a benchmark's break) is not an error worth a traceback."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        """The URL of the served directory."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def tar_gets(self) -> int:
        """GET requests for shards so far."""
        return sum(n for path, n in self.requests.items() if path.endswith(".tar"))

    def __enter__(self) -> StoreServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
