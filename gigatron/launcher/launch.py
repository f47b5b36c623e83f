"""`gigatron launch`: run N local ranks of a command and report one meaningful exit code.

We do not use torchrun because it collapses worker failures to exit code 1, which would hide
``EXIT_PREEMPTED`` (75) from the SLURM script that decides whether to requeue.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gigatron.launcher.exit_codes import EXIT_CANCELLED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PREEMPTED

FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
POLL_INTERVAL_S = 0.05
EXIT_COMMAND_NOT_FOUND = 127


def child_environ(
    base: Mapping[str, str], rank: int, nproc: int, port: int, omp_threads: int | None = None
) -> dict[str, str]:
    """The environment of local rank `rank`: `base` plus the torchrun-style rendezvous variables."""
    env = dict(base)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    elif "OMP_NUM_THREADS" not in env:
        # N ranks each spawning cpu_count threads would oversubscribe the cores N times over.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return env


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child receive SIGKILL when `parent_pid` (the launcher) dies,
    however it dies (SIGKILL included): a rank outliving its launcher would write beside the next
    run. Linux only (prctl PR_SET_PDEATHSIG); elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arrange() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # the launcher died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return arrange


def normalise_returncode(code: int) -> int:
    """Popen reports death by signal as ``-signum``; shells and SLURM expect ``128 + signum``."""
    return 128 - code if code < 0 else code


# Codes of ranks that stopped in order (finished, or saved after a signal), weakest first: when all
# ranks stopped in order the launcher reports the strongest (an interrupt outranks a preemption).
ORDERLY_EXITS: tuple[int, ...] = (EXIT_OK, EXIT_PREEMPTED, EXIT_CANCELLED, EXIT_INTERRUPTED)


def died_of(code: int) -> signal.Signals | None:
    """The signal a rank with (normalised) exit code `code` died of, when that is a fault: SIGKILL
    (the OOM killer, a lost node), SIGSEGV, SIGBUS, SIGABRT... but not SIGINT or SIGTERM, which are
    requests to stop."""
    if code <= 128:
        return None
    try:
        sig = signal.Signals(code - 128)
    except ValueError:
        return None
    return None if sig in (signal.SIGINT, signal.SIGTERM) else sig


def combine_exit_codes(codes: Sequence[int]) -> int:
    """The strongest of ORDERLY_EXITS when every rank ended in order (0 when all 0; 75 when the
    others are 0; 143 over 75; 130 over all); else the first other code, in observed order, except
    that a rank dead of a signal (`died_of`) gives EXIT_PREEMPTED: the job is worth requeueing."""
    for code in codes:
        if code not in ORDERLY_EXITS:
            return EXIT_PREEMPTED if died_of(code) is not None else code
    return max(codes, key=ORDERLY_EXITS.index, default=EXIT_OK)


class LocalLauncher:
    """Owns the child processes: spawns them, forwards signals, and stops survivors of a crash."""

    def __init__(self, command: Sequence[str], envs: Sequence[Mapping[str, str]], grace_s: float = 30.0) -> None:
        self.command = list(command)
        self.envs = list(envs)
        self.grace_s = grace_s
        self.procs: list[subprocess.Popen] = []
        # Normalised exit codes in the order they were observed, without those of ranks the
        # launcher killed itself (their code says nothing about the run).
        self.codes: list[int] = []

    def run(self) -> int:
        """Spawn, supervise and reap all ranks; returns the combined exit code."""
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED_SIGNALS}
        try:
            try:
                for env in self.envs:
                    # Their own process group: a terminal's Ctrl-C reaches the launcher only, which
                    # forwards it once (a rank must tell a first interrupt from a second).
                    self.procs.append(subprocess.Popen(self.command, env=dict(env), process_group=0,
                                                       preexec_fn=die_with_parent(os.getpid())))
            except OSError as exc:
                print(f"gigatron launch: cannot start {self.command[0]!r}: {exc}", file=sys.stderr)
                self._signal_live(signal.SIGKILL)
                self._reap_all()
                return EXIT_COMMAND_NOT_FOUND
            return self._supervise()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _forward(self, signum: int, frame: Any) -> None:
        # The ranks are in their own process groups: every signal reaches them through here, once.
        self._signal_live(signum)

    def _signal_live(self, signum: int) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                # The child may have exited since the last poll.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    def _supervise(self) -> int:
        live = set(range(len(self.procs)))
        killed: set[int] = set()
        kill_at: float | None = None
        first = 0
        while live:
            for rank in sorted(live):
                code = self.procs[rank].poll()
                if code is None:
                    continue
                live.discard(rank)
                if rank in killed:
                    continue
                code = normalise_returncode(code)
                self.codes.append(code)
                if kill_at is None and live:
                    # Ranks that stop in order stop together; the others of a rank that failed, died
                    # or gave up on a hang are stuck in a collective, or frozen: they get grace_s to
                    # notice and exit, then SIGKILL (SIGTERM would ask them to save, which they cannot
                    # with a peer gone; a stopped process only obeys SIGKILL).
                    kill_at = time.monotonic() + self.grace_s
                    first = rank
                    if code not in ORDERLY_EXITS:
                        print(f"gigatron launch: {self._describe_exit(rank, code)}; the other ranks get "
                              f"{self.grace_s:g} s to exit, then SIGKILL", file=sys.stderr, flush=True)
            if kill_at is not None and time.monotonic() >= kill_at and live:
                print(f"gigatron launch: rank(s) {', '.join(map(str, sorted(live)))} still running "
                      f"{self.grace_s:g} s after rank {first} ended: SIGKILL", file=sys.stderr,
                      flush=True)
                killed |= live
                self._signal_live(signal.SIGKILL)
                kill_at = float("inf")
            if live:
                time.sleep(POLL_INTERVAL_S)
        code = combine_exit_codes(self.codes)
        failure = next((c for c in self.codes if c not in ORDERLY_EXITS), None)
        if failure is not None and died_of(failure) is not None:
            print(f"gigatron launch: exiting with {code} so the job can be requeued: a rank died of "
                  f"{died_of(failure).name}, which a restart from the last checkpoint survives", file=sys.stderr,
                  flush=True)
        return code

    @staticmethod
    def _describe_exit(rank: int, code: int) -> str:
        sig = died_of(code)
        if sig is not None:
            return f"rank {rank} died of {sig.name} (exit {code})"
        return f"rank {rank} exited with {code}"

    def _reap_all(self) -> None:
        for proc in self.procs:
            proc.wait()
