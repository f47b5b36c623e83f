"""Shared helpers: run `gigatron pretrain` as real processes and read what it wrote."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "gpt" / "smoke.yaml"
# `python -m gigatron` for tests: the same command, forked by tests/zygote.py from a process that
# imported torch, DeepSpeed and gigatron once (a fresh `python -m gigatron` where no zygote runs).
GIGATRON = [sys.executable, "-S", str(REPO / "tests" / "zygote_client.py")]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Multi-process and end-to-end tests are `slow`: `-m "not slow"` is the inner loop (unit tests)."""
    for item in items:
        if item.get_closest_marker("distributed") or item.path.parent.name == "integration":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def zygote(tmp_path_factory):
    """Start the command zygote for the session; commands started before it is ready queue on its socket."""
    if os.environ.get("GIGATRON_TEST_NO_ZYGOTE"):
        yield None
        return
    path = tmp_path_factory.mktemp("zygote") / "socket"
    with open(path.with_name("zygote.log"), "w") as log:  # the server's own import warnings
        server = subprocess.Popen([sys.executable, str(REPO / "tests" / "zygote.py"), str(path)], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not path.exists() and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if path.exists():
        os.environ["GIGATRON_ZYGOTE"] = str(path)
        # Helper processes gigatron starts itself (convert reshard's ranks) are forked by the zygote too.
        os.environ["GIGATRON_COMMAND"] = shlex.join(GIGATRON)
    yield server
    os.environ.pop("GIGATRON_ZYGOTE", None)
    os.environ.pop("GIGATRON_COMMAND", None)
    server.kill()
    server.wait()


@pytest.fixture(scope="module")
def one_thread_per_run():
    """Runs compared bitwise across processes use one thread: MKL's multi-threaded sgemm rounds
    differently from one process to the next (measured: a 30-step run resumed twice matched an
    uninterrupted one in 0 of 3 tries with 2 threads, 3 of 3 with 1; see docs/pretrain.md)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def pretrain_command(output_dir: Path, overrides: list[str], nproc: int = 1, config: Path = SMOKE,
                     fresh: bool = False, grace: float = 10) -> list[str]:
    """The command line of a smoke run writing to `output_dir` (under `gigatron launch` when nproc > 1).

    fresh: a new interpreter, not a zygote fork: for tests that SIGKILL the process group of a run
    (a zygote's command lives outside the client's group and dies only when the zygote sees the
    client gone). grace: the launcher's --grace (seconds the other ranks get after one ends).
    """
    gigatron = [sys.executable, "-m", "gigatron"] if fresh else GIGATRON
    train = [*gigatron, "pretrain", "--config", str(config),
             "--set", f"output_dir={output_dir}", "--set", "logging.progress_bar=false",
             "--set", "logging.tensorboard=false",
             # The memory check plans every run (seconds); tests/unit/test_plan.py checks it once.
             "--set", "hardware.memory_check=false"]
    for item in [*overrides, *warmup_within(config, overrides)]:
        train += ["--set", item]
    if nproc == 1:
        return train
    return [*gigatron, "launch", "--nproc", str(nproc), "--grace", f"{grace:g}", "--", *train]


def warmup_within(config: Path, overrides: list[str]) -> list[str]:
    """`train.warmup_steps=<steps>` when a test shortens a run below its config's warmup (which the
    trainer refuses), so short test runs keep warming up over their whole length."""
    from gigatron.config import ConfigError, load_config

    if any(o.startswith("train.warmup_steps=") for o in overrides):
        return []
    try:
        train = load_config(config, overrides).train
    except ConfigError:
        return []  # a test of bad input: let the trainer report it
    if train.steps is not None and 1 <= train.steps < train.warmup_steps:
        return [f"train.warmup_steps={train.steps}"]
    return []


def _run_env(nproc: int, threads: int | None = None) -> dict[str, str]:
    """The environment of a smoke run: `threads` per rank, else OMP_NUM_THREADS, else the 2 cores shared."""
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", max(1, 2 // nproc)))
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run_pretrain(output_dir: Path, overrides: list[str], nproc: int = 1, timeout: float = 300,
                 config: Path = SMOKE) -> subprocess.CompletedProcess:
    """Run to completion; the caller checks the return code."""
    return subprocess.run(pretrain_command(output_dir, overrides, nproc, config), capture_output=True, text=True,
                          timeout=timeout, env=_run_env(nproc), cwd=REPO)


class BackgroundRun:
    """A smoke run started now and awaited later, so that a fixture's reference runs overlap each other
    or the test that compares with them (one-thread runs leave the second core idle otherwise)."""

    def __init__(self, output_dir: Path, overrides: list[str], nproc: int = 1, config: Path = SMOKE,
                 threads: int | None = None) -> None:
        self.output_dir = output_dir
        self._proc = subprocess.Popen(pretrain_command(output_dir, overrides, nproc, config), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=_run_env(nproc, threads), cwd=REPO)
        self._output: str | None = None

    def wait(self, timeout: float = 300) -> Path:
        """The run's output_dir once it has exited 0 (fails the test with its output otherwise)."""
        if self._output is None:
            self._output, _ = self._proc.communicate(timeout=timeout)
        assert self._proc.returncode == 0, f"{self.output_dir}: exit {self._proc.returncode}\n{self._output[-4000:]}"
        return self.output_dir

    def kill(self) -> None:
        """Stop the run if it is still going (fixture teardown after a failed test)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.communicate()


def finish_all(runs: dict[str, BackgroundRun]) -> dict[str, Path]:
    """Wait for runs started together; name -> output_dir. A failure stops the others."""
    try:
        return {name: run.wait() for name, run in runs.items()}
    finally:
        for run in runs.values():
            run.kill()


def read_metrics(output_dir: Path, kind: str = "train") -> list[dict]:
    """Records of metrics.jsonl of one kind, in file order."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if rec["kind"] == kind]


def train_losses(output_dir: Path) -> dict[int, float]:
    """Step -> training loss from metrics.jsonl; a step logged twice (before a kill and after the
    resume) keeps the later value."""
    return {r["step"]: r["loss"] for r in read_metrics(output_dir)}


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    """Model weights in the checkpoint named by `latest` (single-process runs)."""
    ckpt = output_dir / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    # Our own file written by DeepSpeed; it holds non-tensor objects, so a full unpickle.
    states = torch.load(ckpt / tag / "mp_rank_00_model_states.pt", weights_only=False, map_location="cpu")
    return states["module"]


def pypi_reachable() -> bool:
    """Whether pypi.org answers: tests that download may skip only when it does not."""
    import socket

    try:
        socket.create_connection(("pypi.org", 443), timeout=10).close()
    except OSError:
        return False
    return True


def assert_same_curves(run: Path, reference: Path, steps: int = 5) -> None:
    """The run logged the reference's train losses and grad norms at every step and its validation loss."""
    ours, theirs = read_metrics(run), read_metrics(reference)
    assert [r["step"] for r in ours] == list(range(1, steps + 1))
    for a, b in zip(ours, theirs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a["step"], a["loss"], b["loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert read_metrics(run, "valid")[0]["loss"] == pytest.approx(read_metrics(reference, "valid")[0]["loss"], rel=1e-5)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    """Fail with the run's output when it did not exit 0."""
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="session")
def corpus_ready() -> None:
    """Download and tokenize the default corpus once, before runs race for it."""
    from gigatron.config.schema import DataConfig
    from gigatron.data.build import build_lm_data

    build_lm_data(DataConfig(seq_len=128))
    build_lm_data(DataConfig(seq_len=128, default_vocab_size=1024))
