"""`gigatron launch` end to end: rendezvous, crash propagation and preemption exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gigatron.launcher.exit_codes import EXIT_PREEMPTED
from gigatron.launcher.launch import child_environ, combine_exit_codes, died_of, normalise_returncode

PREAMBLE = """
import os, sys, time
from pathlib import Path
from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
OUT = Path(sys.argv[1])
"""


def _launcher_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_", "WORLD_"))}
    env.update(GIGATRON_DEVICE="cpu", PYTHONUNBUFFERED="1")
    return env


def _launch(tmp_path: Path, body: str, *options: str) -> subprocess.Popen:
    script = tmp_path / "rank.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    cmd = [sys.executable, "-m", "gigatron", "launch", "--nproc", "2", *options,
           "--", sys.executable, str(script), str(tmp_path)]
    return subprocess.Popen(cmd, env=_launcher_env())


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.distributed
def test_ranks_rendezvous_and_all_reduce(tmp_path: Path) -> None:
    body = """
    import torch, torch.distributed as dist
    env = DistEnv.from_environ()
    init_distributed(env, timeout_s=30)
    value = torch.tensor([env.rank])
    dist.all_reduce(value)
    (OUT / f"rank{env.rank}.txt").write_text(str(int(value.item())))
    exit_distributed(0)
    """
    assert _wait(_launch(tmp_path, body), timeout=60) == 0
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["1", "1"]


@pytest.mark.distributed
def test_exit_distributed_ends_every_rank_with_its_code_after_point_to_point_traffic(tmp_path: Path) -> None:
    # Ring exchanges (what context parallelism does) left gloo aborting finished processes at
    # interpreter exit (exit 134) about one run in six; exit_distributed skips that teardown.
    body = """
    import torch, torch.distributed as dist
    env = DistEnv.from_environ()
    init_distributed(env, timeout_s=30)
    for _ in range(20):
        send, recv = torch.full((64,), float(env.rank)), torch.empty(64)
        ops = [dist.P2POp(dist.isend, send, 1 - env.rank), dist.P2POp(dist.irecv, recv, 1 - env.rank)]
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    (OUT / f"rank{env.rank}.txt").write_text(str(int(recv[0].item())))
    exit_distributed(4)
    (OUT / f"after{env.rank}.txt").write_text("")
    """
    for _ in range(3):
        assert _wait(_launch(tmp_path, body), timeout=60) == 4
        assert [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)] == ["1", "0"]
        assert not list(tmp_path.glob("after*")), "code after exit_distributed ran"


@pytest.mark.distributed
def test_crashed_rank_code_wins_and_survivors_are_stopped(tmp_path: Path) -> None:
    body = """
    import torch.distributed as dist
    env = DistEnv.from_environ()
    init_distributed(env, timeout_s=30)
    if env.rank == 1:
        os._exit(3)
    try:
        dist.barrier()
    except Exception:
        pass
    # Behave like a rank stuck in a collective (what NCCL does): only the launcher can end it.
    time.sleep(120)
    """
    start = time.monotonic()
    assert _wait(_launch(tmp_path, body, "--grace", "5"), timeout=60) == 3
    # Rank 0 has no SIGTERM handler, so the SIGTERM after the 5 s grace ends it.
    assert time.monotonic() - start < 25


@pytest.mark.distributed
def test_forwarded_sigusr1_is_agreed_and_exits_75(tmp_path: Path) -> None:
    body = """
    from gigatron.launcher.signals import StopHandler, agree_on_stop
    env = DistEnv.from_environ()
    handler = StopHandler().install()
    init_distributed(env, timeout_s=30)
    (OUT / f"ready{env.rank}").write_text("")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if agree_on_stop(handler.signal) is not None:
            (OUT / f"stopped{env.rank}").write_text(str(handler.signal_name))
            # As the trainer ends: sys.exit would run gloo's teardown, which intermittently
            # aborts a finished process (exit 134) - the flake exit_distributed exists for.
            exit_distributed(75)
        time.sleep(0.1)
    exit_distributed(1)
    """
    proc = _launch(tmp_path, body)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready{r}").exists() for r in range(2)):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("ranks did not become ready")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGUSR1)
    assert _wait(proc, timeout=30) == EXIT_PREEMPTED
    assert [(tmp_path / f"stopped{r}").read_text() for r in range(2)] == ["SIGUSR1", "SIGUSR1"]


@pytest.mark.parametrize(
    ("codes", "expected"),
    [([0, 0], 0), ([0, 75], 75), ([75, 75], 75), ([75, 3, 1], 3), ([143, 3], 3), ([75, 143], 143),
     ([143, 130, 0], 130), ([], 0),
     # A rank dead of a fault signal (SIGSEGV, SIGKILL) makes the job worth requeueing; the
     # survivors' codes that follow do not matter.
     ([139, 143], 75), ([137, 75, 75], 75), ([137, 1], 75), ([1, 137], 1)],
)
def test_combine_exit_codes(codes: list[int], expected: int) -> None:
    assert combine_exit_codes(codes) == expected


def test_died_of_names_fault_signals_only() -> None:
    assert died_of(137) == signal.SIGKILL and died_of(139) == signal.SIGSEGV and died_of(134) == signal.SIGABRT
    assert died_of(143) is None and died_of(130) is None and died_of(75) is None and died_of(1) is None


def test_signal_deaths_map_to_shell_codes() -> None:
    assert normalise_returncode(-signal.SIGTERM) == 143
    assert normalise_returncode(3) == 3


def test_child_environ_sets_rendezvous_and_respects_omp() -> None:
    env = child_environ({"PATH": "/bin"}, rank=1, nproc=2, port=1234)
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("1", "1", "2", "1234")
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert child_environ({"OMP_NUM_THREADS": "7"}, 0, 2, 1)["OMP_NUM_THREADS"] == "7"
    assert child_environ({"OMP_NUM_THREADS": "7"}, 0, 2, 1, omp_threads=2)["OMP_NUM_THREADS"] == "2"


@pytest.mark.distributed
def test_ranks_end_when_the_launcher_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the launcher alone (not its group) ends its ranks, which would otherwise train on
    beside the next run."""
    body = """
    env = DistEnv.from_environ()
    (OUT / f"pid{env.rank}").write_text(str(os.getpid()))
    time.sleep(120)
    """
    script = tmp_path / "rank.py"
    script.write_text(PREAMBLE + textwrap.dedent(body))
    proc = subprocess.Popen([sys.executable, "-m", "gigatron", "launch", "--nproc", "2", "--",
                             sys.executable, str(script), str(tmp_path)], env=_launcher_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"pid{r}").exists() for r in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, "ranks did not start"
            time.sleep(0.05)
        pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        def alive(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            # A dead child not yet reaped by init is a zombie: gone for our purpose.
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"

        deadline = time.monotonic() + 10
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "ranks outlived their launcher"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
