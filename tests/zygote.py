"""A zygote for the test suite: `gigatron` commands forked from one process that imported everything once.

Each `python -m gigatron ...` a test starts pays for importing torch, DeepSpeed, megatron-core and
gigatron again. The server below imports them once (and runs no tensor op, so no thread pool
exists to be broken by fork) and then forks one process per command. A command is asked for by
`tests/zygote_client.py`, which passes its argv, environment, working directory and standard
streams, forwards the signals it receives, and exits with the command's exit code or signal.
The forked command is a real, separate process: its own process-group state, gloo groups and
`os._exit`; only the import time is shared.

    python tests/zygote.py SOCKET        serve until killed (tests/conftest.py starts and stops it)

`tests/zygote_client.py --script PATH ARGS` runs a test's worker script the same way.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import signal
import socket
import sys
import threading
import traceback

PRELOAD = (
    "gigatron", "torch", "numpy", "deepspeed", "megatron.core.parallel_state", "megatron.core.tensor_parallel",
    "gigatron.commands", "gigatron.commands.pretrain", "gigatron.pretrain.loop", "gigatron.pretrain.engine",
    "gigatron.checkpoint.reader", "gigatron.checkpoint.convert", "gigatron.inference.generation",
    "gigatron.models.gpt.model", "gigatron.models.hybrid.model", "gigatron.models.tokenformer.model",
    "gigatron.models.fit.model", "gigatron.models.t2i.model", "gigatron.objectives.rectified_flow",
    "gigatron.objectives.image_classification",
    "megatron.core.optimizer", "megatron.core.distributed", "transformers",
)
# Signals a client forwards to its command (what `gigatron launch` and the tests send).
FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            raise ConnectionError("client went away mid-request")
        data += more
    return json.loads(data), fds


def _run_command(request: dict, fds: list[int]) -> None:
    """In the forked command process: become the client's process, run gigatron, exit."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    # A fresh interpreter would put the client's PYTHONPATH first on sys.path (plugins, e.g. a model
    # family registered by a package outside gigatron).
    for entry in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and os.path.abspath(entry) not in sys.path:
            sys.path.insert(0, os.path.abspath(entry))
    script = request.get("script")
    sys.argv = [script or "gigatron", *request["argv"]]
    code = 1
    try:
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads:
            # The OpenMP runtime read the server's variable when it loaded; a fresh process would read ours.
            import torch

            torch.set_num_threads(int(threads))
        if script:  # a test's worker script, run as `python SCRIPT ARGS`
            sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
            runpy.run_path(script, run_name="__main__")
            code = 0
        else:
            from gigatron.commands import main

            code = main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - like an uncaught exception in a fresh interpreter
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve_one(conn: socket.socket) -> None:
    """In a per-request process: fork the command, relay signals to it, report how it ended."""
    request, fds = _read_request(conn)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_command(request, fds)
    for fd in fds:
        os.close(fd)

    def relay() -> None:
        reader = conn.makefile("r")
        for line in reader:
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(pid, int(line))
        # The client is gone (killed, perhaps with SIGKILL): its command goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    threading.Thread(target=relay, daemon=True).start()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        reply = f"signal {os.WTERMSIG(status)}\n"
    else:
        reply = f"exit {os.WEXITSTATUS(status)}\n"
    with contextlib.suppress(OSError):
        conn.sendall(reply.encode())
    os._exit(0)


def serve(path: str) -> None:
    """Listen on the Unix socket `path`, preload, then fork per request until killed.

    Requests that arrive while the imports run wait in the socket's backlog.
    """
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(128)
    for name in PRELOAD:
        importlib.import_module(name)
    # DeepSpeed detects the accelerator once per process (cached in the module, so forks inherit it).
    # Its shared-memory comm op is switched off, as the trainer does (gigatron.parallel.deepspeed_comm):
    # building it is a JIT compile under a file lock that a process killed mid-build leaves behind,
    # after which this server, and every test, waited on it forever.
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    get_accelerator()
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # per-request processes are never waited for
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _serve_one(conn)
        conn.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    serve(sys.argv[1])
