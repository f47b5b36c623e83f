"""Loopback object stores for tests of datasets read by URL: an HTTP server over a directory, and
an S3 server (`local_s3`).

It can misbehave on purpose: `fail_first` requests of each .tar path are answered by closing the
connection (half of them after sending part of the body, a truncated transfer), and `status_first`
requests get an HTTP status (503) instead. Every request is counted per path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


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


@contextlib.contextmanager
def local_s3(monkeypatch) -> Iterator[Any]:
    """An S3 server (moto's, on 127.0.0.1) for the duration; yields an s3fs filesystem pointed at it.

    Skips the test when moto[server] or s3fs is not installed. The AWS_* variables that botocore
    reads (credentials, region, AWS_ENDPOINT_URL) are set through `monkeypatch`, so every s3://
    URL opened meanwhile goes to this server.
    """
    import pytest

    moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install moto[server])")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        yield s3fs.S3FileSystem()
    finally:
        server.stop()
