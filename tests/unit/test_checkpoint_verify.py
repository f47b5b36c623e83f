"""Every command that reads a checkpoint checks it against its manifest before using a byte: a
tensor file changed after the save (same size, different sha256) is named and the command exits 2;
`--skip-checksums` (commands) and `checkpoint.verify_checksums=false` (pretrain) read it anyway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gigatron.checkpoint.files import DamagedCheckpoint, verify_manifest
from gigatron.checkpoint.reader import open_checkpoint
from tests.conftest import GIGATRON, REPO, SMOKE, assert_ok, run_pretrain

TWO_STEPS = ["train.steps=2", "train.warmup_steps=2", "train.eval_interval=0", "data.num_workers=0"]
DAMAGED_FILE = "mp_rank_00_model_states.pt"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, corpus_ready) -> Path:
    """A 2-step gpt smoke run whose checkpoint's weights file had one byte changed after the save."""
    run = tmp_path_factory.mktemp("damaged")
    assert_ok(run_pretrain(run, TWO_STEPS))
    tag = run / "checkpoints" / "step_00000002"
    target = tag / DAMAGED_FILE
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: torch.load still reads it
    target.write_bytes(bytes(data))
    return tag


def _gigatron(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*GIGATRON, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_damaged_file_still_loads_without_the_check(damaged):
    """The symptom: without the manifest check the file would be used silently."""
    assert verify_manifest(damaged, checksums=False) is None
    ckpt = open_checkpoint(damaged, checksums=False)
    assert ckpt.tensor(next(iter(sorted(ckpt.stored_names())))) is not None
    with pytest.raises(DamagedCheckpoint, match=f"{DAMAGED_FILE} fails its sha256 check"):
        open_checkpoint(damaged)


# Each reader of a checkpoint, as a user types it (`{tag}` is the damaged checkpoint, `{out}` a new path).
READERS = {
    "pretrain --resume-from": ["pretrain", "--config", str(SMOKE), "--resume-from", "{tag}",
                               "--set", "output_dir={out}", "--set", "hardware.memory_check=false"],
    "pretrain grow.checkpoint": ["pretrain", "--config", str(REPO / "configs/tokenformer/smoke.yaml"),
                                 "--set", "grow.checkpoint={tag}", "--set", "output_dir={out}",
                                 "--set", "hardware.memory_check=false"],
    "convert consolidate": ["convert", "consolidate", "{tag}", "{out}"],
    "convert reshard": ["convert", "reshard", "{tag}", "{out}", "--tp", "2"],
    "export-hf": ["export-hf", "--ckpt", "{tag}", "--out", "{out}"],
    "generate": ["generate", "--ckpt", "{tag}", "--prompt", "hello", "--max-new-tokens", "2"],
    "grow": ["grow", "{tag}", "--ffn-tokens", "64", "--out", "{out}"],
    "matformer extract": ["matformer", "extract", "{tag}", "--widths", "0.5", "--out", "{out}"],
    "matformer eval": ["matformer", "eval", "{tag}", "--out", "{out}"],
    "sample": ["sample", "{tag}", "--out", "{out}"],
    "align": ["align", "{tag}", "--out", "{out}"],
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_a_damaged_checkpoint_naming_the_file(reader, damaged, tmp_path):
    args = [a.format(tag=damaged, out=tmp_path / "out") for a in READERS[reader]]
    proc = _gigatron(*args, cwd=REPO)
    assert proc.returncode == 2, (reader, proc.returncode, proc.stderr[-2000:])
    assert f"{damaged / DAMAGED_FILE} fails its sha256 check" in proc.stderr, proc.stderr[-2000:]
    assert "--skip-checksums" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or reader.startswith("pretrain")


def test_skipping_the_checksums_reads_the_checkpoint(damaged, tmp_path):
    assert_ok(_gigatron("convert", "consolidate", str(damaged), str(tmp_path / "c"), "--skip-checksums", cwd=REPO))
    proc = _gigatron("pretrain", "--config", str(SMOKE), "--resume-from", str(damaged),
                     "--set", f"output_dir={tmp_path / 'run'}", "--set", "checkpoint.verify_checksums=false",
                     "--set", "train.steps=3", "--set", "train.warmup_steps=3", "--set", "train.eval_interval=0", "--set", "data.num_workers=0",
                     "--set", "hardware.memory_check=false", "--set", "logging.progress_bar=false",
                     "--set", "logging.tensorboard=false", cwd=REPO)
    assert_ok(proc)
    assert (tmp_path / "run" / "checkpoints" / "step_00000003").is_dir()


def test_a_truncated_file_is_named_even_without_checksums(damaged, tmp_path):
    copy = tmp_path / damaged.name
    shutil.copytree(damaged, copy)
    with open(copy / "trainer_state.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(DamagedCheckpoint, match="trainer_state.json has .* bytes, the manifest says"):
        open_checkpoint(copy, checksums=False)
