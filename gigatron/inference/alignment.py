"""Text-image alignment of a text-to-image checkpoint on shapes captions (`gigatron align`).

Draws one image per validation caption of the run's data (the last `images.valid_images` samples;
captions never seen in training), scores each with the deterministic detector of
`data/shapes_alignment.py` (colour, shape and position of every shape the caption names), and
writes `alignment.json`, `grid.png` and `captions.txt`. Chance level is measured, not assumed: the
same images scored against the captions of the next image. The JSON holds the model's parameters
and FLOPs per image, so alignment of several runs can be fitted with `gigatron scaling fit --method
power` (as "On the Scalability of Diffusion-based Text-to-Image Generation" fits alignment).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def validation_captions(cfg, count: int) -> list[str]:
    """The first `count` captions of the run's validation split (the dataset's last valid_images samples)."""
    from gigatron.data.caption_tokenizer import dataset_captions
    from gigatron.data.default_images import run_image_root

    images = cfg.images
    root = run_image_root(cfg.data, images)
    if images.valid_images < 1:
        raise ValueError(f"the run has no validation images (images.valid_images={images.valid_images}); alignment "
                         "is measured on captions the model never trained on")
    captions = dataset_captions(root)[-images.valid_images:]
    return captions[:count]


def evaluate(ckpt_path: str, out: Path, images: int, steps: int, guidance: float, size: str | None, batch: int,
             seed: int, log=print, checksums: bool = True) -> dict:
    """Sample, score and write; returns the alignment record. `checksums`: check the checkpoint's
    sha256s against its manifest (its sizes always)."""
    import numpy as np

    from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint
    from gigatron.data.shapes_alignment import score_alignment
    from gigatron.inference.images import parse_size, prompt_tokens, save_grid, size_multiple, to_uint8
    from gigatron.models.registry import get_model_spec

    ckpt = open_checkpoint(ckpt_path, checksums)
    cfg = ckpt.cfg
    spec = get_model_spec(type(cfg.model).family)
    if not spec.reads_captions or cfg.model.channels != 3:
        raise ValueError(f"{ckpt_path}: alignment needs a pixel-space text-to-image model (model.family=t2i, "
                         f"model.channels=3), got {type(cfg.model).family}")
    if images < 2 or steps < 1 or batch < 1:
        raise ValueError(f"--images ({images}) must be >= 2, --steps ({steps}) and --batch ({batch}) >= 1")
    height, width = parse_size(size, cfg.images.image_size, size_multiple(cfg.model))
    model = model_from_checkpoint(ckpt)
    captions = validation_captions(cfg, images)
    tokens = prompt_tokens(ckpt, captions)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(captions), cfg.model.channels, height, width, generator=generator)
    start = time.perf_counter()
    pixels = np.concatenate([
        to_uint8(model.sample(noise[i:i + batch], tokens[i:i + batch], steps, guidance, cfg.diffusion.shift))
        for i in range(0, len(captions), batch)])
    elapsed = time.perf_counter() - start
    scores = score_alignment(list(pixels), captions)
    patches = (height // cfg.model.patch_size) * (width // cfg.model.patch_size)
    chance = score_alignment(list(pixels), captions[1:] + captions[:1])
    record = {
        "checkpoint": str(ckpt.path), "family": type(cfg.model).family, "step": ckpt.trainer_state.get("step"),
        "params": spec.num_params(cfg.model),
        "flops_per_image": spec.flops_per_token(cfg.model, patches) * patches,
        "size": [height, width], "steps": steps, "cfg": guidance, "seed": seed, **scores,
        "chance": {k: chance[k] for k in ("colour_accuracy", "shape_accuracy", "position_accuracy",
                                          "object_colour_accuracy")},
        "sample_seconds": elapsed,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment.json").write_text(json.dumps(record, indent=1) + "\n")
    shown = min(len(pixels), 32)
    save_grid(pixels[:shown], max(1, shown // 8), out / "grid.png")
    (out / "captions.txt").write_text("".join(f"{i}: {c}\n" for i, c in enumerate(captions[:shown])))
    log(f"[align] {len(captions)} validation captions, {scores['claims']:.0f} claims: colour at the named cell "
        f"{scores['colour_accuracy']:.3f} (chance {chance['colour_accuracy']:.3f}), shape {scores['shape_accuracy']:.3f}, "
        f"position {scores['position_accuracy']:.3f}, all right {scores['image_accuracy']:.3f}; main object's colour "
        f"{scores['object_colour_accuracy']:.3f} (chance {chance['object_colour_accuracy']:.3f}); "
        f"sampled in {elapsed:.1f} s -> {out}/alignment.json")
    return record
