"""Every shipped config fits the hardware it declares (`hardware:`), as `gigatron plan` plans it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigatron.config import load_config
from gigatron.planning.plan import Target, plan_run
from tests.conftest import REPO


def _shipped() -> list[Path]:
    found = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if path.name == "base.yaml":
            continue  # what sizes share, not a run of its own
        found.append(path)
    return found


@pytest.mark.slow  # ~1-8 s per config (the 176-block text-to-image model ~20 s)
@pytest.mark.parametrize("path", _shipped(), ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_fits_its_declared_hardware(path: Path):
    cfg = load_config(path)
    assert cfg.hardware.gpus is not None, f"{path}: declare hardware.gpus (and gpu_memory_gib)"
    plan = plan_run(cfg, Target.from_config(cfg))
    assert plan.fits, (f"{path}: {plan.peak.total / 2**30:.1f} GiB on stage {plan.peak.stage} > "
                       f"{cfg.hardware.gpu_memory_gib} GiB; run `gigatron plan --config {path} --search`")
