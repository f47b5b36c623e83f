"""The DeepSpeed config derived from ours: batch arithmetic, ZeRO buckets, and gradient-reduction
overlap on GPUs only (gloo on the CPU has no streams to overlap on)."""

from __future__ import annotations

from gigatron.config.loader import load_config
from gigatron.pretrain.engine import deepspeed_config
from tests.conftest import REPO


def _zero(device: str, stage: int) -> dict:
    cfg = load_config(REPO / "configs/gpt/smoke.yaml", [f"parallel.zero_stage={stage}", "train.global_batch_size=8",
                                                        "train.micro_batch_size=2"])
    ds = deepspeed_config(cfg, data_size=2, clip_in_engine=True, local_parameters=10**6, device=device)
    assert ds["train_batch_size"] == 8 and ds["gradient_accumulation_steps"] == 2
    return ds["zero_optimization"]


def test_gradient_reduction_overlaps_backward_on_gpus_with_zero():
    assert _zero("cuda:0", 2)["overlap_comm"] is True
    assert _zero("cuda:0", 1)["overlap_comm"] is True
    assert _zero("cuda:0", 0)["overlap_comm"] is False
    assert _zero("cpu", 2)["overlap_comm"] is False
    assert _zero("cuda:0", 2)["contiguous_gradients"] is True
