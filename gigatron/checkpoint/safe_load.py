"""Reading `.pt` files that someone handed us without ever running code from them.

`torch.load(weights_only=True)` rebuilds only tensors and plain containers. DeepSpeed's optimizer
files also pickle three of its small classes (a loss scaler, an enum and a (numel, start) record);
those names are mapped to inert stand-ins defined here, so loading neither imports DeepSpeed nor
calls any of its code. Anything else a file asks to construct is refused.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A file that can only be read by unpickling arbitrary objects; it was not executed."""


class OpaqueState:
    """Stand-in for DeepSpeed's LossScaler: keeps the pickled attributes, does nothing."""


class ZeroStage(int):
    """Stand-in for DeepSpeed's ZeroStageEnum (an int enum)."""


@dataclass
class FragmentAddress:
    """Stand-in for DeepSpeed's fragment_address: a parameter's range inside a flat partition."""

    numel: int = 0
    start: int = 0


_STAND_INS = [
    (OpaqueState, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (ZeroStage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
]


def safe_torch_load(path: str | Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with DeepSpeed's records allowed as inert data.

    `mmap=True` maps tensor storages instead of reading them, so a caller that touches one tensor
    at a time needs memory for that tensor only. Raises UnsafeCheckpointError, naming the file and
    the object it wanted, for anything that needs arbitrary unpickling.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if detail is None:  # not a request for a forbidden object: the file is simply not a checkpoint
            raise ValueError(f"{path}: not a readable torch checkpoint file (neither torch's zip format nor a "
                             "pickle of tensors)") from exc
        raise UnsafeCheckpointError(
            f"{path}: refused, it can only be read by unpickling arbitrary objects ({detail[:200]}); gigatron reads "
            "checkpoints with safetensors or torch.load(weights_only=True) and never runs code from a file. "
            "If you trust its origin, convert it yourself to safetensors and pass that instead") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc

