"""slurm/pretrain.sh is the one sbatch script; the named ones are it with a job name and a default config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gigatron.config import load_config
from tests.conftest import REPO

SHARED = REPO / "slurm" / "pretrain.sh"
NAMED = sorted((REPO / "slurm").glob("pretrain_*.sh"))


def _sbatch_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("#SBATCH")]


def _fake_venv(tmp_path: Path) -> Path:
    # A `gigatron` that prints the arguments it was given, so a script runs without training.
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "gigatron"
    fake.write_text('#!/usr/bin/env bash\nprintf "ARG %s\\n" "$@"\n')
    fake.chmod(0o755)
    return tmp_path / "venv"


def _run(script: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GIGATRON_"))}
    return subprocess.run(["bash", str(script), "--set", "train.steps=1"], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env={**clean, "GIGATRON_VENV": str(_fake_venv(tmp_path)),
                                             "GIGATRON_RUN_DIR": str(tmp_path / "run"), **env})


def test_named_scripts_exist() -> None:
    assert {p.name for p in NAMED} >= {"pretrain_hybrid.sh", "pretrain_gpt.sh", "pretrain_longctx.sh",
                                       "pretrain_fit.sh", "pretrain_t2i.sh"}


@pytest.mark.parametrize("script", NAMED, ids=lambda p: p.name)
def test_named_script_is_the_shared_one_with_its_name_and_default(script: Path, tmp_path: Path) -> None:
    family = script.stem.removeprefix("pretrain_")
    expected = [f"#SBATCH --job-name=gigatron-{family}" if line.startswith("#SBATCH --job-name") else line
                for line in _sbatch_lines(SHARED)]
    assert _sbatch_lines(script) == expected
    body = [line for line in script.read_text().splitlines() if line and not line.startswith("#")]
    assert len(body) <= 8, "a named script is its #SBATCH header and a few lines over slurm/pretrain.sh"
    proc = _run(script, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    args = [line.removeprefix("ARG ") for line in proc.stdout.splitlines() if line.startswith("ARG ")]
    config = args[args.index("--config") + 1]
    assert config == f"configs/{family}/smoke.yaml" and load_config(REPO / config) is not None
    assert args[0] == "pretrain" and args[-2:] == ["--set", "train.steps=1"]


def test_shared_script_takes_any_family_from_its_config(tmp_path: Path) -> None:
    proc = _run(SHARED, tmp_path, GIGATRON_CONFIG="configs/tokenformer/smoke.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ARG configs/tokenformer/smoke.yaml" in proc.stdout
    proc = _run(SHARED, tmp_path)
    assert "ARG configs/hybrid/smoke.yaml" in proc.stdout


def test_a_missing_config_is_named(tmp_path: Path) -> None:
    proc = _run(SHARED, tmp_path, GIGATRON_CONFIG="configs/nope.yaml")
    assert proc.returncode == 2
    assert "GIGATRON_CONFIG=configs/nope.yaml: no such file" in proc.stdout
