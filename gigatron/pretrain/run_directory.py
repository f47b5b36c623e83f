"""One run per output directory: the lock a run holds on it, and what a fresh start does with the
checkpoints of an earlier run there.

The lock is `<output_dir>/.gigatron-run.lock`, created exclusively (O_EXCL, which NFS v3+ and Lustre
honour) by global rank 0 and holding the holder's host, pid, SLURM job id and start time; a thread
refreshes its modification time every HEARTBEAT_S seconds. A second run is refused with exit 2,
naming the holder. A lock is stale, and taken over with a note in the log, when
- it was taken under this process's own SLURM job id (a requeued job finds the lock of its own
  earlier attempt, whose node may still be tearing down), or
- its holder ran on this host and that pid is gone (or its heartbeat stopped: the pid was reused), or
- its SLURM job is no longer queued or running (`squeue` answers for the job id), or
- its heartbeat is older than STALE_AFTER_S (a holder on another host, without SLURM).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatron.checkpoint.files import list_tags
from gigatron.config import Config, ConfigError

LOCK_NAME = ".gigatron-run.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class RunDirectoryBusy(ConfigError):
    """Another live run holds the output directory; the message names it."""


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def describe_holder(holder: dict[str, Any]) -> str:
    """'pid 123 on host h (SLURM job 45), since <time>'."""
    job = f" (SLURM job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{job}, since {holder.get('started')}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a stopped process does; so does an unreaped zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


# Job states in which a job may still write to its directory (squeue --states=all reports the rest too).
_SLURM_LIVE_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
                      "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def _slurm_job_active(job_id: str) -> bool | None:
    """Whether SLURM still has the job queued or running; None when squeue cannot tell."""
    try:
        proc = subprocess.run(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%T"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # An unknown id ("Invalid job id specified") is a job SLURM has already forgotten.
        return False if "invalid job id" in proc.stderr.lower() else None
    return any(state in _SLURM_LIVE_STATES for state in proc.stdout.split())


def stale_reason(holder: dict[str, Any], age_s: float) -> str | None:
    """Why the lock of `holder`, last refreshed `age_s` seconds ago, no longer holds; None if it does."""
    ours = os.environ.get("SLURM_JOB_ID")
    job = holder.get("slurm_job_id")
    if ours and job == ours:
        return f"it was taken by an earlier attempt of this SLURM job ({ours}, requeued)"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not pid_alive(holder["pid"]):
            return f"pid {holder['pid']} is no longer running on this host"
        if age_s > STALE_AFTER_S:  # the pid was reused by another process
            return f"pid {holder['pid']} is another process now (no heartbeat for {age_s:.0f} s)"
        return None
    if job:
        active = _slurm_job_active(str(job))
        if active is False:
            return f"SLURM job {job} is no longer queued or running"
        if active:
            return None
    if age_s > STALE_AFTER_S:
        return f"its heartbeat stopped {age_s:.0f} s ago (> {STALE_AFTER_S:.0f} s)"
    return None


def lock_state(path: Path) -> tuple[dict[str, Any], str | None]:
    """(holder, why the lock is stale or None while it holds) of the lock file `path`. A file that
    cannot be read (half-written by a starter that died, or removed meanwhile) is stale."""
    try:
        holder = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        holder, age = {}, STALE_AFTER_S + 1
    return holder, stale_reason(holder, age)


def is_held(output_dir: Path) -> bool:
    """Whether a live run holds `output_dir` now."""
    path = output_dir / LOCK_NAME
    return path.exists() and lock_state(path)[1] is None


@dataclass
class RunLock:
    """The lock this process holds on `path`; `release()` removes it (if it is still ours)."""

    path: Path
    holder: dict[str, Any]
    _stop: threading.Event

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it still names this process."""
        self._stop.set()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()) == self.holder:
                self.path.unlink()


def acquire(output_dir: Path, log=print) -> RunLock:
    """Take the lock on `output_dir` (created if missing), taking over a stale one; raise
    RunDirectoryBusy naming the holder of a live one."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file, not a directory; give the run a directory "
                          "(it holds checkpoints/, metrics.jsonl and tensorboard/)")
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    holder = _holder()
    for _ in range(3):  # a stale lock removed here may be taken by another starter first
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            current, reason = lock_state(path)
            if reason is None:
                raise RunDirectoryBusy(
                    f"output_dir {output_dir} is in use by another run: {describe_holder(current)} ({path}). "
                    "Two runs in one directory would prune each other's checkpoints; wait for it to end, "
                    "give this run its own output_dir, or, if that run is gone, delete the lock file") from None
            log(f"[run] taking over the lock on {output_dir} from {describe_holder(current)}: {reason}")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
            handle.flush()
            os.fsync(handle.fileno())
        lock = RunLock(path, holder, threading.Event())
        threading.Thread(target=lock._beat, name="gigatron-run-lock", daemon=True).start()
        return lock
    raise RunDirectoryBusy(f"output_dir {output_dir}: another run took the lock {path} while this one started")


def start_fresh(cfg: Config, log=print) -> None:
    """With checkpoint.resume=none: refuse a directory holding an earlier run's checkpoints, or
    (checkpoint.overwrite) move them, its metrics and TensorBoard logs aside first."""
    if cfg.checkpoint.resume != "none":
        return
    ckpt_dir = Path(cfg.checkpoint_dir)
    tags = list_tags(ckpt_dir)
    if not tags and not (ckpt_dir / "latest").exists():
        return
    if not cfg.checkpoint.overwrite:
        raise ConfigError(
            f"checkpoint.resume=none, but {ckpt_dir} holds checkpoints of an earlier run ({', '.join(tags[-3:])}); "
            "a fresh run there would mix the two runs in `latest` and pruning. Give this run a new output_dir, "
            "resume with checkpoint.resume=auto, or set checkpoint.overwrite=true to move the earlier run's "
            "checkpoints, metrics, TensorBoard logs and fault records aside (nothing is deleted)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = ckpt_dir.with_name(f"{ckpt_dir.name}.previous-{stamp}")
    os.replace(ckpt_dir, aside)
    moved = [f"{ckpt_dir} -> {aside}"]
    output_dir = Path(cfg.output_dir)
    # faults/ too: its rollback records would make the new run skip the old run's bad batches.
    logs = [p for p in (output_dir / "metrics.jsonl", output_dir / "tensorboard", output_dir / "faults")
            if p.exists()]
    if logs:
        previous = output_dir / f"previous-{stamp}"
        previous.mkdir()
        for p in logs:
            shutil.move(str(p), previous / p.name)
        moved.append(f"{', '.join(p.name for p in logs)} -> {previous}")
    log(f"[run] checkpoint.overwrite: moved the earlier run aside: {'; '.join(moved)}")


def claim_output_dir(cfg: Config, log=print) -> RunLock | None:
    """Every rank: global rank 0 takes the output directory's lock and prepares a fresh start
    (`start_fresh`); all ranks raise the same ConfigError if either fails. Rank 0 gets the lock."""
    import torch.distributed as dist

    from gigatron.launcher.dist_env import broadcast_from_first_rank

    lock, problem = None, None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            lock = acquire(Path(cfg.output_dir), log)
            start_fresh(cfg, log)
        except (ConfigError, OSError) as exc:
            if lock is not None:
                lock.release()
                lock = None
            problem = (type(exc).__name__, str(exc))
    problem = broadcast_from_first_rank(problem)
    if problem is not None:
        kind, message = problem
        raise (RunDirectoryBusy if kind == RunDirectoryBusy.__name__ else ConfigError)(message)
    return lock
