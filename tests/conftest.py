"""Shared helpers: run `gigatron pretrain` as real processes and read what it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "gpt" / "smoke.yaml"


def pretrain_command(output_dir: Path, overrides: list[str], nproc: int = 1, config: Path = SMOKE) -> list[str]:
    """The command line of a smoke run writing to `output_dir` (under `gigatron launch` when nproc > 1)."""
    train = [sys.executable, "-m", "gigatron", "pretrain", "--config", str(config),
             "--set", f"output_dir={output_dir}", "--set", "logging.progress_bar=false",
             "--set", "logging.tensorboard=false"]
    for item in overrides:
        train += ["--set", item]
    if nproc == 1:
        return train
    return [sys.executable, "-m", "gigatron", "launch", "--nproc", str(nproc), "--grace", "10", "--", *train]


def run_pretrain(output_dir: Path, overrides: list[str], nproc: int = 1, timeout: float = 300,
                 config: Path = SMOKE) -> subprocess.CompletedProcess:
    """Run to completion; the caller checks the return code."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, 2 // nproc)))}
    return subprocess.run(pretrain_command(output_dir, overrides, nproc, config), capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def read_metrics(output_dir: Path, kind: str = "train") -> list[dict]:
    """Records of metrics.jsonl of one kind, in file order."""
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if rec["kind"] == kind]


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
