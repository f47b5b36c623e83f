"""Logical tensors out of a DeepSpeed checkpoint tag written by any gigatron layout.

What DeepSpeed writes, per layout (tp = TP size; "mp rank" = pipeline stage * tp + TP rank):
  ZeRO-0           mp_rank_XX_model_states.pt: "module" (weights) and "optimizer" (torch AdamW
                   state; our groups carry `param_names`); with PP the weights are in
                   layer_LL-model_TT-model_states.pt instead.
  ZeRO-1/2         weights as above; (bf16_)zero_pp_rank_D_mp_rank_XX_optim_states.pt per DP rank D:
                   the fp32 master partition and AdamW moments as flat tensors per param group, and
                   `param_slice_mappings` saying where each named parameter's slice lies in them.
  ZeRO-3           zero_pp_rank_D_mp_rank_XX_model_states.pt (parameter shapes in group order) and
                   .._optim_states.pt: each parameter split evenly over DP ranks (last one padded),
                   ranks' flat groups holding their pieces in parameter order.
Files are memory-mapped and each logical tensor is assembled alone, so reading needs memory for
about one tensor, whatever the model size.
"""

from __future__ import annotations

import json
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from gigatron.checkpoint.files import require_intact
from gigatron.checkpoint.param_plan import ParamPlan, param_plans, tied_aliases
from gigatron.checkpoint.safe_load import safe_torch_load
from gigatron.config import Config, load_config

MOMENTS = ("exp_avg", "exp_avg_sq")
_MP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_LAYER_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
_ZERO_OPTIM = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")
_ZERO3_MODEL = re.compile(r"^zero_pp_rank_(\d+)_mp_rank_(\d+)_model_states\.pt$")


class CheckpointFormatError(ValueError):
    """The files do not have the structure their layout implies; names the file and what is wrong."""


def _index_files(tag: Path, pattern: re.Pattern) -> dict[tuple[int, ...], Path]:
    return {tuple(int(g) for g in m.groups()): p for p in tag.iterdir() if (m := pattern.match(p.name))}


class NativeCheckpoint:
    """A `step_NNNNNNNN` directory written by the trainer, read as logical (TP=1) fp32 tensors."""

    kind = "native"

    def __init__(self, tag: Path, checksums: bool = True, verified: bool = False) -> None:
        """Open `tag` after checking it against its manifest (sizes, and sha256 with `checksums`),
        unless the caller has (`verified`); DamagedCheckpoint names a file that does not match."""
        self.path = Path(tag)
        if not verified:
            require_intact(self.path, checksums)
        self.cfg: Config = load_config(self.path / "config.yaml", migrate=True)
        self.trainer_state: dict[str, Any] = json.loads((self.path / "trainer_state.json").read_text())
        self.plans: dict[str, ParamPlan] = param_plans(self.cfg.model)
        p = self.cfg.parallel
        self.tp, self.pp, self.zero_stage = p.tp, p.pp, p.zero_stage
        self._mp_files = _index_files(self.path, _MP_FILE)
        self._layer_files = _index_files(self.path, _LAYER_FILE)
        self._zero_files = _index_files(self.path, _ZERO_OPTIM)
        self._zero3_models = _index_files(self.path, _ZERO3_MODEL)
        self._loaded: dict[Path, Any] = {}
        if self.zero_stage == 3 or self._zero_files:
            self.dp = len({d for d, _ in self._zero_files})
        else:
            self.dp = None  # ZeRO-0 writes one replica: the DP size is not recorded and does not matter
        self._check_complete()

    # ---- files ------------------------------------------------------------------------------
    def _load(self, path: Path) -> Any:
        if path not in self._loaded:
            self._loaded[path] = safe_torch_load(path, mmap=True)
        return self._loaded[path]

    def _check_complete(self) -> None:
        mp_ranks = range(self.tp * self.pp)
        if self.zero_stage == 3:
            wanted = [(d, m) for d in range(self.dp or 0) for m in mp_ranks]
            missing = [f"zero_pp_rank_{d}_mp_rank_{m:02d}_{kind}_states.pt" for d, m in wanted
                       for kind, files in (("optim", self._zero_files), ("model", self._zero3_models))
                       if (d, m) not in files]
            if not self._zero_files:
                missing.append("zero_pp_rank_*_mp_rank_*_optim_states.pt")
        else:
            missing = [f"mp_rank_{m:02d}_model_states.pt" for m in mp_ranks if (m,) not in self._mp_files]
            if self._zero_files:
                missing += [f"zero_pp_rank_{d}_mp_rank_{m:02d}_optim_states.pt" for d in range(self.dp or 0)
                            for m in mp_ranks if (d, m) not in self._zero_files]
            elif self.zero_stage in (1, 2):
                missing.append("zero_pp_rank_*_optim_states.pt (ZeRO-1/2 optimizer files)")
        if missing:
            raise CheckpointFormatError(
                f"{self.path}: incomplete for parallel.tp={self.tp}, pp={self.pp}, zero_stage={self.zero_stage} "
                f"(from its config.yaml): missing {', '.join(missing[:6])}" + (" …" if len(missing) > 6 else ""))

    @property
    def layout(self) -> dict[str, Any]:
        """The layout that wrote the checkpoint."""
        return {"tp": self.tp, "pp": self.pp, "dp": self.dp, "zero_stage": self.zero_stage,
                "precision": self.cfg.train.precision}

    # ---- where each parameter lives -----------------------------------------------------------
    @cached_property
    def _zero12_index(self) -> dict[tuple[str, int], tuple[int, int]]:
        """(name, tp rank) -> (mp rank, param group) for ZeRO-1/2 and bf16 optimizer files."""
        index = {}
        for (_, m), path in sorted(self._zero_files.items()):
            for group, mapping in enumerate(self._load(path)["optimizer_state_dict"]["param_slice_mappings"]):
                for name in mapping:
                    index[(name, m % self.tp)] = (m, group)
        return index

    def _zero0_optimizer(self, m: int) -> tuple[dict | None, list | None]:
        """(torch optimizer state dict, fp32 master groups or None) of mp rank m at ZeRO-0.

        fp32 runs save our AdamW's state directly; bf16/fp16 runs save DeepSpeed's unfused
        wrapper: {'optimizer_state_dict': AdamW's state, 'fp32_groups': the fp32 masters per group}.
        """
        saved = self._load(self._mp_files[(m,)]).get("optimizer")
        if saved is None:
            return None, None
        if "optimizer_state_dict" in saved:
            return saved["optimizer_state_dict"], saved.get("fp32_groups")
        return saved, None

    @cached_property
    def _zero0_index(self) -> dict[tuple[str, int], tuple[int, int, int, int]]:
        """(name, tp rank) -> (mp rank, optimizer state index, group, position in group) via `param_names`."""
        index = {}
        for m in range(self.tp * self.pp):
            optimizer, _ = self._zero0_optimizer(m)
            if optimizer is None:
                continue
            for g, group in enumerate(optimizer["param_groups"]):
                if "param_names" not in group:
                    raise CheckpointFormatError(
                        f"{self._mp_files[(m,)]}: the optimizer state does not name its parameters (written before "
                        "gigatron recorded param_names); only the weights of this checkpoint can be converted")
                for j, (name, position) in enumerate(zip(group["param_names"], group["params"], strict=True)):
                    index[(name, m % self.tp)] = (m, position, g, j)
        return index

    @cached_property
    def _zero3_index(self) -> dict[tuple[str, int], tuple[int, int, int]]:
        """(name, tp rank) -> (tp rank, offset in a rank's concatenated flat groups, per-rank numel)."""
        index = {}
        for t in range(self.tp):
            offset = 0
            for group in self._load(self._zero3_models[(0, t)])["param_shapes"]:
                for name, shape in group.items():
                    numel = int(math.prod(shape))
                    per_rank = -(-numel // self.dp)
                    index[(name, t)] = (t, offset, per_rank)
                    offset += per_rank
        return index

    def _plan(self, name: str) -> ParamPlan:
        if name not in self.plans:
            raise KeyError(f"{self.path}: no parameter {name!r} in the model its config.yaml describes")
        return self.plans[name]

    # ---- one TP shard, flat or shaped ----------------------------------------------------------
    def _zero12_shard(self, name: str, t: int, key: str | None) -> torch.Tensor:
        m, group = self._zero12_index[(name, t)]
        pieces = []
        for d in range(self.dp):
            osd = self._load(self._zero_files[(d, m)])["optimizer_state_dict"]
            address = osd["param_slice_mappings"][group].get(name)
            if address is None:
                continue  # this DP rank's partition holds none of the parameter
            if key is None:
                flat = osd["single_partition_of_fp32_groups"][group]
            else:
                flat = osd["base_optimizer_state"]["state"][group][key]
            pieces.append(flat.narrow(0, address.start, address.numel))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _zero3_flat(self, d: int, t: int, key: str | None) -> list[torch.Tensor]:
        osd = self._load(self._zero_files[(d, t)])["optimizer_state_dict"]
        if key is None:
            return list(osd["fp32_flat_groups"])
        states = osd["optimizer_state_dict"]["state"]
        return [states[i][key] for i in sorted(states)]

    def _zero3_shard(self, name: str, t: int, key: str | None, numel: int) -> torch.Tensor:
        _, offset, per_rank = self._zero3_index[(name, t)]
        pieces = []
        for d in range(self.dp):
            remaining = numel - d * per_rank
            if remaining <= 0:
                break
            pieces.append(_narrow_across(self._zero3_flat(d, t, key), offset, min(per_rank, remaining)))
        return torch.cat(pieces)

    def _zero0_weight(self, name: str, t: int) -> torch.Tensor:
        if self.pp > 1:
            layer, _, rest = name.partition(".")
            path = self._layer_files.get((int(layer), t))
            if path is None:
                raise CheckpointFormatError(f"{self.path}: no layer_{int(layer):02d}-model_{t:02d}-model_states.pt "
                                            f"for parameter {name}")
            return self._load(path)[rest]
        return self._load(self._mp_files[(t,)])["module"][name]

    def _shard(self, name: str, t: int, key: str | None) -> torch.Tensor:
        plan = self._plan(name)
        shape = plan.shard_shape(self.tp)
        if self.zero_stage == 3:
            flat = self._zero3_shard(name, t, key, int(math.prod(shape)))
        elif self._zero_files:
            if (name, t) not in self._zero12_index:
                raise CheckpointFormatError(f"{self.path}: parameter {name} is in no optimizer partition")
            flat = self._zero12_shard(name, t, key)
        elif key is None and not self._has_fp32_masters:
            return self._zero0_weight(name, t).detach().float().view(shape)
        else:
            if (name, t) not in self._zero0_index:
                raise CheckpointFormatError(f"{self.path}: no optimizer state for parameter {name}")
            m, position, g, j = self._zero0_index[(name, t)]
            optimizer, masters = self._zero0_optimizer(m)
            if key is None:
                return masters[g][j].detach().float().view(shape)
            state = optimizer["state"].get(position)
            if state is None:
                raise CheckpointFormatError(f"{self.path}: optimizer state of {name} is empty (no step taken yet)")
            return state[key].detach().float().view(shape)
        if flat.numel() != math.prod(shape):
            raise CheckpointFormatError(f"{self.path}: {name} has {flat.numel()} elements on TP rank {t}, "
                                        f"the model needs {math.prod(shape)}")
        return flat.detach().float().view(shape)

    # ---- the logical view ----------------------------------------------------------------------
    def tensor(self, name: str, key: str | None = None) -> torch.Tensor:
        """Logical fp32 weight (`key` None) or AdamW moment ('exp_avg', 'exp_avg_sq') of `name`.

        The result may be a read-only view of a mapped file; copy it before changing it.
        """
        plan = self._plan(name)
        if plan.dim is None or self.tp == 1:
            return self._shard(name, 0, key)
        out = torch.empty(plan.shape, dtype=torch.float32)
        for t in range(self.tp):
            plan.place_shard(out, self._shard(name, t, key), t, self.tp)
        return out

    def model_weight(self, name: str) -> torch.Tensor:
        """The weight as the model holds it (bf16 in bf16 runs), merged over TP; an independent copy of
        the master weight for verification. ZeRO-3 keeps no such copy: the master weight is returned."""
        plan = self._plan(name)
        if self.zero_stage == 3:
            return self.tensor(name)
        shards = [self._zero0_weight(name, t).detach().float().view(plan.shard_shape(self.tp)) for t in range(self.tp)]
        if plan.dim is None or self.tp == 1:
            return shards[0]
        out = torch.empty(plan.shape, dtype=torch.float32)
        for t, shard in enumerate(shards):
            plan.place_shard(out, shard, t, self.tp)
        return out

    @cached_property
    def _has_fp32_masters(self) -> bool:
        # A bf16/fp16 ZeRO-0 run keeps fp32 masters beside the (low-precision) model weights.
        return self.zero_stage == 0 and not self._zero_files and self._zero0_optimizer(0)[1] is not None

    @cached_property
    def has_optimizer(self) -> bool:
        """Whether AdamW moments are stored (a run that took no step has none)."""
        if self.zero_stage >= 1 or self._zero_files:
            return True
        return any(self._load(self._mp_files[(m,)]).get("optimizer") for m in range(self.tp * self.pp))

    @cached_property
    def optimizer_step(self) -> int:
        """AdamW's step counter (bias correction); equals the trainer step unless steps were skipped."""
        if self.zero_stage == 3:
            states = self._load(self._zero_files[(0, 0)])["optimizer_state_dict"]["optimizer_state_dict"]["state"]
        elif self._zero_files:
            states = self._load(self._zero_files[(0, 0)])["optimizer_state_dict"]["base_optimizer_state"]["state"]
        else:
            optimizer = self._zero0_optimizer(0)[0] or {"state": {}}
            states = optimizer["state"]
        steps = {int(s["step"]) for s in states.values() if "step" in s}
        if len(steps) > 1:
            raise CheckpointFormatError(f"{self.path}: optimizer step counters disagree: {sorted(steps)}")
        return steps.pop() if steps else 0

    @cached_property
    def rng(self) -> dict[str, Any] | None:
        """Rank 0's RNG states (python, numpy, torch), if saved."""
        path = self.path / "rng" / "rank_00000.pt"
        return safe_torch_load(path) if path.is_file() else None

    def stored_names(self) -> set[str]:
        """Names the files hold weights for (to report mismatches with the model)."""
        names: set[str] = set()
        if self.zero_stage == 3:
            names = {name for name, _ in self._zero3_index}
        elif self._zero_files:
            names = {name for name, _ in self._zero12_index}
        elif self.pp > 1:
            for (layer, t), path in self._layer_files.items():
                if t == 0:
                    names |= {f"{layer}.{k}" for k, v in self._load(path).items() if isinstance(v, torch.Tensor)}
        else:
            module = self._load(self._mp_files[(0,)])["module"]
            names = {k for k, v in module.items() if isinstance(v, torch.Tensor)}
        # A tied weight is in the state dict under both names; it is one parameter.
        return names - set(tied_aliases(self.cfg.model))


def _narrow_across(chunks: list[torch.Tensor], offset: int, length: int) -> torch.Tensor:
    """`torch.cat(chunks)[offset:offset+length]` without concatenating everything."""
    pieces = []
    for chunk in chunks:
        n = chunk.numel()
        if offset >= n:
            offset -= n
            continue
        take = min(length, n - offset)
        pieces.append(chunk.narrow(0, offset, take))
        length -= take
        offset = 0
        if length == 0:
            break
    if length:
        raise CheckpointFormatError("a ZeRO-3 partition is shorter than its parameter shapes say")
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

