"""FIT end to end: the encoder (classification) and the diffusion decoder (rectified flow) train on
the shapes set under DP=2 with ZeRO-2 exactly as on one process (per-sample noise is seeded by the
sample, not the rank), and `gigatron sample` draws PNGs from the decoder's checkpoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import GIGATRON, REPO, assert_ok, assert_same_curves, run_pretrain

pytestmark = pytest.mark.distributed

ENCODER = REPO / "configs" / "fit" / "smoke.yaml"
DECODER = REPO / "configs" / "fit" / "decoder-smoke.yaml"
# Small and short: 5 steps of 8 images, 2 micro-batches of 4 on one process, 1 per rank on two.
STEPS = ["train.steps=5", "train.warmup_steps=2", "train.eval_interval=5", "train.eval_batches=1",
         "train.global_batch_size=8", "train.micro_batch_size=4", "data.num_workers=0", "images.valid_images=16",
         "images.default_images=64"]
# Each FIT block recomputed in the backward pass, which changes no arithmetic.
ZERO2 = ["parallel.zero_stage=2", "train.recompute=full"]


@pytest.mark.parametrize("config", [ENCODER, DECODER], ids=["encoder", "decoder"])
def test_dp2_zero2_matches_single_process(tmp_path, config):
    single, dp2 = tmp_path / "single", tmp_path / "dp2"
    assert_ok(run_pretrain(single, STEPS, config=config))
    assert_ok(run_pretrain(dp2, [*STEPS, *ZERO2], nproc=2, config=config))
    assert_same_curves(dp2, single)
    if config == DECODER:
        _sample_from(single, tmp_path / "samples")


def _sample_from(run: Path, out: Path) -> None:
    gigatron = [*GIGATRON, "sample", str(run), "--out", str(out)]
    done = subprocess.run([*gigatron, "--label", "red", "--label", "blue", "--count", "2", "--steps", "3"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert_ok(done)
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["blue-0.png", "blue-1.png", "grid.png", "red-0.png", "red-1.png"]
    assert Image.open(out / "red-0.png").size == (32, 32)
    bad = subprocess.run([*gigatron, "--label", "mauve"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and "--label mauve: not a class of this run; valid: red, green" in bad.stderr
