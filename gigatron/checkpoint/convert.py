"""Moving a checkpoint between layouts (`gigatron convert`).

    consolidate CKPT OUT    any checkpoint (ZeRO 0-3, any TP/PP) -> one consolidated directory
    reshard CKPT OUT --tp T --pp P --dp D --zero Z
                            any checkpoint -> DeepSpeed files of another layout (OUT is a checkpoints
                            directory with `latest`, resumable with `pretrain --resume-from OUT`)

Both reload what they wrote and compare it with the source (tensors bitwise, logits on a fixed
batch) before reporting success.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gigatron.checkpoint.consolidated import ConsolidatedCheckpoint, write_consolidated
from gigatron.checkpoint.native import NativeCheckpoint
from gigatron.checkpoint.reader import open_checkpoint, resolve_checkpoint
from gigatron.checkpoint.verify import verify_conversion
from gigatron.config import config_to_yaml, validate_config
from gigatron.launcher.command import gigatron_command


def _fresh_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; choose a new output directory")


def consolidate(ckpt: str | Path, out: str | Path, verify: bool = True, log=print, checksums: bool = True) -> Path:
    """Write any checkpoint as a consolidated directory and check it against the source (which is
    first checked against its manifest: sizes, and sha256 with `checksums`)."""
    out = Path(out)
    _fresh_out(out)
    source = open_checkpoint(ckpt, checksums)
    write_consolidated(source, out, log=log)
    if verify:
        verify_conversion(source, ConsolidatedCheckpoint(out), log=log)
    return out


def reshard(ckpt: str | Path, out: str | Path, tp: int, pp: int, dp: int, zero: int | None, verify: bool = True,
            log=print, checksums: bool = True) -> Path:
    """Write any checkpoint as DeepSpeed files of the layout (tp, pp, dp, zero), using tp*pp*dp CPU
    ranks; the source is checked against its manifest here, once, before the ranks read it."""
    out = Path(out)
    _fresh_out(out)
    source = open_checkpoint(ckpt, checksums)
    cfg = copy.deepcopy(source.cfg)
    cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.cp = tp, pp, 1
    cfg.parallel.dp = None
    if zero is not None:
        cfg.parallel.zero_stage = zero
    world = tp * pp * dp
    cfg = validate_config(cfg, world)
    with tempfile.TemporaryDirectory(prefix="gigatron-reshard-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(config_to_yaml(cfg))
        partial = out.with_name(f".{out.name}.partial.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        gigatron = gigatron_command()
        worker = [*gigatron, "convert", "reshard-worker", "--source",
                  str(resolve_checkpoint(ckpt)), "--config", str(config), "--out", str(partial)]
        command = worker if world == 1 else [*gigatron, "launch", "--nproc", str(world), "--", *worker]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"resharding to tp={tp} pp={pp} dp={dp} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr[-3000:]}")
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    tag = resolve_checkpoint(out)
    log(f"[convert] wrote {tag} for tp={tp} pp={pp} dp={dp} zero={cfg.parallel.zero_stage}")
    if verify:
        verify_conversion(source, NativeCheckpoint(tag), log=log)
    return out
