"""The watchdog's judgement from heartbeats: who is stuck, who died, who failed; its limits; the
hang settings' validation. (Real hung and killed ranks: tests/integration/test_rank_faults.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from gigatron.config import load_config, validate_config
from gigatron.pretrain.watchdog import (
    DERIVED_FACTOR,
    DERIVED_MIN_S,
    STALE_AFTER_S,
    Watchdog,
    claim_report,
    collective_failed,
    heartbeat_path,
    mark_failed,
    peer_report,
    read_health,
    stuck_ranks,
)
from tests.conftest import SMOKE


def _beat(run: Path, rank: int, step: int, phase: str, age: float = 0.0, pid: int | None = None,
          host: str | None = None, state: str = "running") -> None:
    path = heartbeat_path(run, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "host": host or socket.gethostname(), "pid": pid or os.getpid(),
                                "step": step, "phase": phase, "written": time.time() - age, "state": state}))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_stale_heartbeat_names_the_frozen_rank(tmp_path):
    for rank in range(4):
        _beat(tmp_path, rank, 7, "compute", age=STALE_AFTER_S + 5 if rank == 2 else 1)
    stuck, why = stuck_ranks(read_health(tmp_path, 4))
    assert [h.rank for h in stuck] == [2] and "heartbeat stopped" in why


def test_a_dead_pid_on_this_host_is_gone_at_once(tmp_path):
    for rank in range(3):
        _beat(tmp_path, rank, 7, "compute", pid=_dead_pid() if rank == 1 else None)
    stuck, _ = stuck_ranks(read_health(tmp_path, 3))
    assert [h.rank for h in stuck] == [1]


def test_with_every_rank_alive_the_one_behind_is_named_else_all(tmp_path):
    _beat(tmp_path, 0, 7, "compute")
    _beat(tmp_path, 1, 7, "data")  # still reading its batch while the others wait in the all-reduce
    _beat(tmp_path, 2, 7, "compute")
    stuck, why = stuck_ranks(read_health(tmp_path, 3))
    assert [h.rank for h in stuck] == [1] and why == "behind the other ranks"
    _beat(tmp_path, 1, 7, "compute")
    stuck, why = stuck_ranks(read_health(tmp_path, 3))
    assert [h.rank for h in stuck] == [0, 1, 2] and why == "every rank waiting in the same place"


def test_ranks_that_gave_up_are_not_the_cause(tmp_path):
    _beat(tmp_path, 0, 7, "compute", state="gave up", pid=_dead_pid())
    _beat(tmp_path, 1, 7, "compute", age=STALE_AFTER_S + 5)
    stuck, _ = stuck_ranks(read_health(tmp_path, 2))
    assert [h.rank for h in stuck] == [1]


def test_peer_report_tells_a_failed_rank_from_a_vanished_one(tmp_path):
    _beat(tmp_path, 0, 3, "compute")
    _beat(tmp_path, 1, 3, "compute")
    mark_failed(tmp_path, 1, "ValueError: bad batch")
    report, failed = peer_report(tmp_path, 2, own_rank=0, wait_s=0)
    assert failed and "rank 1 (failed, pid" in report
    _beat(tmp_path, 1, 3, "compute", pid=_dead_pid())
    report, failed = peer_report(tmp_path, 2, own_rank=0, wait_s=0)
    assert not failed and report.startswith("rank 1 (pid")


def test_one_rank_reports_a_fault(tmp_path):
    assert claim_report(tmp_path / "faults" / "x")
    assert not claim_report(tmp_path / "faults" / "x")


def test_the_limit_is_the_allowance_until_a_step_is_done_then_derived_or_set(tmp_path):
    dog = Watchdog(tmp_path, 0, 1, hang_timeout=None, allowance=900, run_id="r")
    dog.beat(1, "compute")
    assert dog.limit() == 900  # the first step compiles and loads
    dog.step_done(0.5)
    assert dog.limit() == DERIVED_MIN_S
    dog.step_done(30.0)
    assert dog.limit() == DERIVED_FACTOR * 30.0
    dog.beat(2, "save")
    assert dog.limit() == 900  # saves and evaluations are not steps
    fixed = Watchdog(tmp_path, 0, 1, hang_timeout=45, allowance=900, run_id="r")
    fixed.step_done(0.5)
    fixed.beat(2, "data")
    assert fixed.limit() == 45


def test_collective_failures_are_told_from_a_ranks_own_errors():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1234")
    assert collective_failed(gloo)
    try:
        raise ValueError("wrapped") from gloo
    except ValueError as exc:
        assert collective_failed(exc)
    assert not collective_failed(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not collective_failed(ValueError("bad value"))


def test_hang_settings_that_are_valid():
    for value in ("0", "10", "null", "600.5"):
        validate_config(load_config(SMOKE, ["train.steps=100", f"train.hang_timeout={value}"]), 1)
