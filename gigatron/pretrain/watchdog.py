"""Hang detection and peer-loss reports: every rank's watchdog thread and heartbeat file.

The training loop marks its progress (`Watchdog.beat(step, phase)`, a few attribute writes). A
daemon thread in every rank
- rewrites `<output_dir>/health/rank-NNNNN.json` every HEARTBEAT_S seconds: host, pid, step, phase,
  when the phase began and when the file was written (a frozen or dead process stops writing), and
- when the current phase has made no progress for its limit, dumps this process's Python stacks
  (faulthandler, every thread) to `<output_dir>/faults/<run start>/rank-NNNNN.txt`, reads every
  rank's heartbeat to name the stuck rank(s), and ends the process with EXIT_PREEMPTED (75): the
  main thread is blocked inside a collective or a read and cannot unwind, and the batch script
  requeues the job, which resumes from the last checkpoint.

The limit of a training step after the first is `train.hang_timeout` seconds (null: derived from
the steps seen, 0: no watchdog); start-up through the first step, evaluations and checkpoint saves
get `train.hang_allowance`. Why our own thread rather than torch's or NVIDIA's tools: see
docs/fault-tolerance.md.

The same heartbeats name a dead peer when a collective fails (gloo reports a closed connection at
once; `peer_report`), and a rank that fails with an exception marks its heartbeat `failed` first,
so the others can tell a crash (not requeued) from a killed process (requeued).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatron.launcher.exit_codes import EXIT_PREEMPTED
from gigatron.pretrain.log_format import stamped
from gigatron.pretrain.run_directory import pid_alive

HEALTH_DIR = "health"
FAULTS_DIR = "faults"
ROLLBACKS = "rollbacks.jsonl"  # under FAULTS_DIR: the sample ranges rollbacks skipped
HEARTBEAT_S = 2.0
# A heartbeat this old (four missed writes) means its writer thread is not running: the process is
# frozen (SIGSTOP, a node swapping to death) or gone. Clocks of NTP-synchronised hosts agree far better.
STALE_AFTER_S = 8.0
# train.hang_timeout: null derives the step limit as this many times the slowest recent step, but
# never below DERIVED_MIN_S (steps of a small model vary by more than 20x on a loaded machine).
DERIVED_FACTOR = 20.0
DERIVED_MIN_S = 180.0
RECENT_STEPS = 100
# Phases of a step, in order: a rank in an earlier phase (or step) than the others is the one they wait for.
STEP_PHASES = ("data", "compute")
PHASE_ORDER = {"start": 0, "data": 1, "compute": 2, "evaluate": 3, "save": 4, "stop": 5}


def heartbeat_path(output_dir: Path, rank: int) -> Path:
    """Where rank `rank` of the run in `output_dir` writes its heartbeat."""
    return Path(output_dir) / HEALTH_DIR / f"rank-{rank:05d}.json"


@dataclass
class RankHealth:
    """One rank's heartbeat as another rank reads it."""

    rank: int
    beat: dict[str, Any] | None  # None: no heartbeat file (the rank never started its watchdog)
    age_s: float | None  # seconds since the file was written

    @property
    def failed(self) -> bool:
        """The rank reported a failure (an exception) before exiting."""
        return self.beat is not None and self.beat.get("state") == "failed"

    @property
    def gave_up(self) -> bool:
        """The rank ended itself on a hang or a lost peer (it is not the cause)."""
        return self.beat is not None and self.beat.get("state") == "gave up"

    @property
    def gone(self) -> bool:
        """Its process is known dead (this host), or its heartbeat stopped: frozen or dead, without
        saying why (a rank that failed or gave up says so)."""
        if self.beat is None or self.age_s is None or self.failed or self.gave_up:
            return False
        if self.beat.get("host") == socket.gethostname() and not pid_alive(int(self.beat.get("pid", -1))):
            return True
        return self.age_s > STALE_AFTER_S

    @property
    def position(self) -> tuple[int, int]:
        """(step, phase order): how far the rank got."""
        beat = self.beat or {}
        return int(beat.get("step", -1)), PHASE_ORDER.get(beat.get("phase", "start"), 0)

    def describe(self) -> str:
        """'rank 2 (pid 123 on host h, step 12 compute, last heartbeat 31 s ago)'."""
        if self.beat is None:
            return f"rank {self.rank} (no heartbeat)"
        b = self.beat
        state = "failed, " if self.failed else ""
        return (f"rank {self.rank} ({state}pid {b.get('pid')} on host {b.get('host')}, step {b.get('step')} "
                f"{b.get('phase')}, last heartbeat {self.age_s:.0f} s ago)")


def _write_json(path: Path, value: dict[str, Any]) -> None:
    # Replaced whole, so a reader never sees half a heartbeat; not fsynced: thousands of ranks
    # rewrite theirs every few seconds, and a heartbeat lost in a crash is stale anyway.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def claim_report(directory: Path) -> bool:
    """Whether this rank is the first to report this invocation's fault (one line per fault, not
    one per rank): creates `directory`/report.txt exclusively."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(directory / "report.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return False
    return True


def read_health(output_dir: Path, world_size: int) -> list[RankHealth]:
    """Every rank's heartbeat, as written so far."""
    found = []
    now = time.time()
    for rank in range(world_size):
        path = heartbeat_path(output_dir, rank)
        try:
            beat = json.loads(path.read_text())
            age = max(0.0, now - float(beat["written"]))
        except (OSError, ValueError, KeyError, TypeError):
            beat, age = None, None
        found.append(RankHealth(rank, beat, age))
    return found


def stuck_ranks(health: list[RankHealth]) -> tuple[list[RankHealth], str]:
    """The ranks the others are waiting for, and why: those whose process is frozen or gone, else
    those behind the rest (an earlier step or phase), else all of them (stuck in one place)."""
    gone = [h for h in health if h.gone or h.failed]
    if gone:
        return gone, "frozen or gone: heartbeat stopped"
    known = [h for h in health if h.beat is not None and not h.gave_up]
    if known:
        least = min(h.position for h in known)
        behind = [h for h in known if h.position == least]
        if len(behind) < len(known):
            return behind, "behind the other ranks"
    return health, "every rank waiting in the same place"


def peer_report(output_dir: Path, world_size: int, own_rank: int, wait_s: float = STALE_AFTER_S + HEARTBEAT_S
                ) -> tuple[str, bool]:
    """After a collective failed: which rank(s) failed or died, and whether one reported a failure
    (an exception: not worth a requeue) rather than vanishing. Waits up to `wait_s` for a dead
    rank's heartbeat to go stale when it ran on another host."""
    deadline = time.monotonic() + wait_s
    while True:
        others = [h for h in read_health(output_dir, world_size) if h.rank != own_rank]
        failed = [h for h in others if h.failed]
        gone = [h for h in others if h.gone]
        if failed or gone or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if failed:
        return "; ".join(h.describe() for h in failed), True
    if gone:
        return "; ".join(h.describe() for h in gone), False
    return "no rank's heartbeat stopped (a network failure?)", False


def mark_failed(output_dir: Path, rank: int, error: str, state: str = "failed") -> None:
    """Record in this rank's heartbeat that it is exiting: on an exception ("failed", read by
    `peer_report`) or because it gave up on a hang or a lost peer ("gave up")."""
    path = heartbeat_path(output_dir, rank)
    try:
        beat = json.loads(path.read_text())
    except (OSError, ValueError):
        beat = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "step": -1, "phase": "start"}
    beat.update(state=state, error=error[:500], written=time.time())
    with contextlib.suppress(OSError):  # the failure itself may be a full disk
        _write_json(path, beat)


class Watchdog:
    """This rank's hang detector; `start()` it, `beat()` from the training loop, `stop()` at the end.

    hang_timeout: limit on one training step after the first (None: derived, 0: off);
    allowance: limit on start-up through the first step, evaluations and saves;
    run_id: names this invocation's directory under faults/ (the same on every rank);
    on_fault: called on every rank that ends itself on a hang or a lost peer, with the one-line report
    and the exit code, before the process exits (e.g. a metrics record).
    """

    def __init__(self, output_dir: Path, rank: int, world_size: int, hang_timeout: float | None,
                 allowance: float, run_id: str, on_fault: Callable[[str, int], None] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.rank, self.world_size = rank, world_size
        self.hang_timeout, self.allowance = hang_timeout, allowance
        self.run_id = run_id
        self.on_fault = on_fault
        self.enabled = hang_timeout != 0
        self.step, self.phase = 0, "start"
        self._since = time.monotonic()
        self._steps_done = 0
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.exit_code: int | None = None  # once peer_lost has decided

    # ---- main thread ----------------------------------------------------------------------------
    def start(self) -> Watchdog:
        """Start the heartbeat and watch thread."""
        heartbeat_path(self.output_dir, self.rank).parent.mkdir(parents=True, exist_ok=True)
        self._write_heartbeat()
        self._thread = threading.Thread(target=self._watch, name="gigatron-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int, phase: str) -> None:
        """The loop reached `phase` of step `step` (the step being trained, 1-based)."""
        self.step, self.phase = step, phase
        self._since = time.monotonic()

    def step_done(self, seconds: float) -> None:
        """A training step took `seconds` (feeds the derived limit)."""
        self._steps_done += 1
        self._recent.append(seconds)

    def stop(self) -> None:
        """End the thread; the heartbeat stays, marked stopped."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.phase = "stop"
        self._write_heartbeat()

    def limit(self) -> float:
        """Seconds the current phase may last without progress."""
        if self._steps_done == 0 or self.phase not in STEP_PHASES:
            return self.allowance
        if self.hang_timeout is not None:
            return self.hang_timeout
        return max(DERIVED_MIN_S, DERIVED_FACTOR * max(self._recent, default=0.0))

    # ---- the thread ---------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._write_heartbeat()
            if self.enabled and time.monotonic() - self._since > self.limit():
                self._hang()

    def _write_heartbeat(self) -> None:
        beat = {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(), "step": self.step,
                "phase": self.phase, "phase_age_s": round(time.monotonic() - self._since, 1),
                "written": time.time(), "state": "stopped" if self.phase == "stop" else "running"}
        # A full disk must not kill the run from this thread; the next save reports it.
        with contextlib.suppress(OSError):
            _write_json(heartbeat_path(self.output_dir, self.rank), beat)

    def fault_dir(self) -> Path:
        """Where this invocation's hang or peer-loss report and stack dumps go."""
        return self.output_dir / FAULTS_DIR / self.run_id

    def _dump_stacks(self, header: str) -> Path:
        """Write `header`, then every thread's Python stack, to this rank's file in fault_dir()."""
        directory = self.fault_dir()
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / f"rank-{self.rank:05d}.txt", "w") as handle:
            handle.write(f"rank {self.rank} pid {os.getpid()} on {socket.gethostname()}: {header}\n\n")
            handle.flush()
            faulthandler.dump_traceback(file=handle, all_threads=True)
        return directory

    def _hang(self) -> None:
        waited = time.monotonic() - self._since
        # Let the other ranks' heartbeats catch up to the same moment before judging them.
        time.sleep(HEARTBEAT_S)
        health = read_health(self.output_dir, self.world_size)
        stuck, why = stuck_ranks(health)
        named = ", ".join(h.describe() for h in stuck)
        directory = self._dump_stacks(f"no progress for {waited:.0f} s (limit {self.limit():.0f} s) in step "
                                      f"{self.step} phase {self.phase}\nstuck: {named} ({why})")
        mark_failed(self.output_dir, self.rank, f"no progress for {waited:.0f} s", state="gave up")
        line = (f"[hang] no progress for {waited:.0f} s at step {self.step} ({self.phase}); stuck: {named} "
                f"({why}); stacks in {directory}; exiting with {EXIT_PREEMPTED} so the job is requeued and "
                "resumes from the last checkpoint")
        self._report(directory, line, health, EXIT_PREEMPTED)
        sys.stdout.flush()
        os._exit(EXIT_PREEMPTED)

    def peer_lost(self, exc: BaseException) -> int:
        """A collective failed under this rank (`collective_failed`): name the rank(s) that failed or
        died, from their heartbeats, once for the run; the exit code is EXIT_PREEMPTED for a rank
        that vanished or hung, 1 for one that raised an error (a requeue would meet it again).
        Called again, answers the first call's code."""
        if self.exit_code is not None:
            return self.exit_code
        report, peer_failed = peer_report(self.output_dir, self.world_size, self.rank)
        code = self.exit_code = 1 if peer_failed else EXIT_PREEMPTED
        # Where this rank was when the collective failed: the exception's traceback, then every
        # thread (a rank whose peer gave up on a hang first leaves here, not through _hang).
        directory = self._dump_stacks(f"a collective failed in step {self.step} phase {self.phase}: {report}\n\n"
                                      + "".join(traceback.format_exception(exc)).rstrip())
        mark_failed(self.output_dir, self.rank, f"lost a peer: {report}", state="gave up")
        error = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)[:160]
        then = ("exiting with 1: see that rank's error" if peer_failed else
                f"exiting with {code} so the job is requeued and resumes from the last checkpoint")
        self._report(directory, f"[peer lost] rank {self.rank}'s collective failed ({error}): {report}; "
                                       f"{then}", read_health(self.output_dir, self.world_size), code)
        return code

    def _report(self, directory: Path, line: str, health: list[RankHealth], code: int) -> None:
        """Print `line` and write it with every rank's heartbeat, if no other rank did first; tell
        `on_fault` in any case (rank 0's metrics record how the invocation ended)."""
        if self.on_fault is not None:
            with contextlib.suppress(Exception):  # the exit that follows matters more than the record
                self.on_fault(line, code)
        if not claim_report(directory):
            return
        (directory / "report.txt").write_text(line + "\n")
        (directory / "ranks.json").write_text(json.dumps(
            [{"rank": h.rank, "age_s": h.age_s, **(h.beat or {})} for h in health], indent=1))
        print(stamped(line), file=sys.stderr, flush=True)


# What gloo and NCCL say when a peer process is gone or a collective timed out.
_PEER_LOSS_MARKERS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Connection refused",
                      "NCCL communicator was aborted", "NCCL error", "Timed out waiting", "timed out",
                      "gloo/transport", "ProcessGroupGloo")


def collective_failed(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) is a collective or store failing because a peer
    is gone or silent, rather than an error of this rank's own."""
    import torch.distributed as dist

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, dist.DistError):
            return True
        if isinstance(seen, RuntimeError) and any(marker in str(seen) for marker in _PEER_LOSS_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
