"""Shards of precomputed latents for latent-space text-to-image training.

Users encode their images with their own VAE and write the latents here; gigatron never runs the
VAE. The dataset has the image-shard layout and manifest (`image_shards.py`), with `<key>.npy`
(a float16/float32 array [channels, h, w], written by `numpy.save`) in place of the image and a
`"latents": {"channels": C}` entry in the manifest:

    from gigatron.data.latent_shards import write_latent_shards
    write_latent_shards(((vae.encode(img), caption) for img, caption in my_pairs), "data/latents")

and the run sets `images.latents: true`, `model.channels: C`, `images.image_size` to the latent side.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gigatron.data.errors import DataError
from gigatron.data.image_shards import (
    IMAGE_FORMAT,
    MANIFEST_NAME,
    SPLIT,
    check_destination,
    swap_into_place,
    write_json_atomic,
)
from gigatron.data.tar_writer import RollingTarWriter

LATENT_EXTENSION = "npy"
_DTYPES = (np.float16, np.float32)


def encode_latent(latent: np.ndarray, where: str) -> bytes:
    """A latent as .npy bytes, after checking it is a finite float16/float32 [channels, h, w] array."""
    latent = np.asarray(latent)
    if latent.ndim != 3 or latent.dtype not in _DTYPES:
        raise DataError(f"{where}: a latent must be a float16/float32 array [channels, h, w], got "
                        f"{latent.dtype} {latent.shape}")
    if not np.isfinite(latent).all():
        raise DataError(f"{where}: the latent holds NaN or infinite values")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(latent), allow_pickle=False)
    return buffer.getvalue()


def decode_latent(data: bytes, where: str) -> np.ndarray:
    """A latent member back as float32 [channels, h, w]; DataError naming `where` when it is not one."""
    try:
        latent = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{where}: the .{LATENT_EXTENSION} member is not a numpy array ({exc})") from exc
    if latent.ndim != 3 or latent.dtype not in _DTYPES:
        raise DataError(f"{where}: the latent must be float16/float32 [channels, h, w], got {latent.dtype} "
                        f"{latent.shape}")
    return latent.astype(np.float32)


def write_latent_shards(pairs: Iterable[tuple[np.ndarray, str]], out: str | Path, samples_per_shard: int = 1000,
                        overwrite: bool = False) -> dict[str, Any]:
    """Write (latent, caption) pairs as shards + manifest under `out`; every latent must have the same channels.

    Built in a temporary sibling directory and moved into place when complete, like image shards.
    """
    out = Path(out)
    check_destination(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    writer = RollingTarWriter(build, SPLIT, samples_per_shard)
    channels = None
    try:
        for i, (latent, caption) in enumerate(pairs):
            key = f"{i:010d}"
            data = encode_latent(latent, f"latent {i}")
            if channels is None:
                channels = int(np.asarray(latent).shape[0])
            elif np.asarray(latent).shape[0] != channels:
                raise DataError(f"latent {i}: {np.asarray(latent).shape[0]} channels, the first had {channels}")
            writer.write({"__key__": key, LATENT_EXTENSION: data, "txt": caption.strip().encode("utf-8")})
        writer.close()
        if channels is None:
            raise DataError("write_latent_shards: no latents given")
        manifest = {"format": IMAGE_FORMAT, "num_samples": writer.count, "latents": {"channels": channels},
                    "samples_per_shard": samples_per_shard,
                    "splits": {SPLIT: {"num_samples": writer.count, "shards": writer.shards}}}
        write_json_atomic(build / MANIFEST_NAME, manifest)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        swap_into_place(build, out)
    except BaseException:
        writer.abort()
        shutil.rmtree(build, ignore_errors=True)
        raise
    return manifest
