"""`python tests/zygote_client.py ARGS...` behaves like `python -m gigatron ARGS...`, forked by tests/zygote.py
(`--script PATH ARGS...`: like `python PATH ARGS...`).

Imports only the standard library so that it starts in milliseconds. Without a zygote
(GIGATRON_ZYGOTE unset or not answering) it runs `python -m gigatron` itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main() -> None:
    """Ask the zygote for the command, relay signals, exit as the command did."""
    argv = sys.argv[1:]
    script = None
    if argv[:1] == ["--script"]:
        script, argv = os.path.abspath(argv[1]), argv[2:]
    path = os.environ.get("GIGATRON_ZYGOTE")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise OSError("no zygote")
        conn.connect(path)
    except OSError:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
        command = [script] if script else ["-m", "gigatron"]
        os.execve(sys.executable, [sys.executable, *command, *argv], env)
    request = json.dumps({"argv": argv, "script": script, "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    request += b"\n"
    streams = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            streams.append(fd)
        except OSError:  # e.g. CI's closed stdin: the command gets /dev/null, as a child process would
            streams.append(os.open(os.devnull, os.O_RDWR))
    socket.send_fds(conn, [request], streams)

    def forward(signum: int, _frame) -> None:
        with contextlib.suppress(OSError):
            conn.sendall(f"{signum}\n".encode())

    for sig in FORWARDED:
        signal.signal(sig, forward)
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            chunk = conn.recv(64)
        except InterruptedError:
            continue
        if not chunk:
            sys.exit(1)  # the zygote died under the command
        reply += chunk
    kind, value = reply.decode().split()
    if kind == "signal":
        signum = int(value)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught anyway
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    sys.exit(int(value))


if __name__ == "__main__":
    main()
