"""The pieces under checkpoint conversion: safe loading, the streaming safetensors writer, TP split plans."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from gigatron.checkpoint.param_plan import ParamPlan, param_plans, tied_aliases
from gigatron.checkpoint.safe_load import FragmentAddress, UnsafeCheckpointError, safe_torch_load
from gigatron.checkpoint.safetensors_stream import StreamingSafetensorsWriter
from gigatron.models.hybrid.config import HybridConfig
from gigatron.models.layers.init import shard_of


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"weights": torch.ones(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt: refused.*system"):
        safe_torch_load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_deepspeed_records_load_as_inert_stand_ins(tmp_path):
    """Files pickling DeepSpeed's classes load without DeepSpeed's code, with their values."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    state = {"loss_scaler": LossScaler(scale=4.0), "zero_stage": ZeroStageEnum.gradients,
             "param_slice_mappings": [{"0.w": fragment_address(numel=6, start=2)}], "flat": torch.arange(8.0)}
    torch.save(state, tmp_path / "optim.pt")
    loaded = safe_torch_load(tmp_path / "optim.pt", mmap=True)
    assert loaded["param_slice_mappings"][0]["0.w"] == FragmentAddress(numel=6, start=2)
    assert int(loaded["zero_stage"]) == 2 and loaded["loss_scaler"].cur_scale == 4.0
    assert torch.equal(loaded["flat"], torch.arange(8.0))


def test_not_a_torch_file_is_named(tmp_path):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable torch checkpoint"):
        safe_torch_load(tmp_path / "junk.pt")


def test_streamed_file_reads_back_with_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file

    tensors = {"a": torch.randn(3, 5), "b.weight": torch.randn(7).to(torch.bfloat16), "c": torch.arange(4)}
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors",
                                        [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], {"k": "v"})
    for name, value in tensors.items():
        writer.write(name, value)
    writer.close()
    loaded = load_file(tmp_path / "x.safetensors")
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert torch.equal(loaded[name], value), name


def test_a_stream_written_out_of_order_or_unfinished_leaves_no_file(tmp_path):
    specs = [("a", (2,), torch.float32), ("b", (2,), torch.float32)]
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs)
    with pytest.raises(ValueError, match="expected a"):
        writer.write("b", torch.zeros(2))
    writer = StreamingSafetensorsWriter(tmp_path / "y.safetensors", specs)
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="only 1 of 2"):
        writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tp", [2, 4])
def test_placing_every_shard_rebuilds_the_logical_tensor(tp):
    full = torch.randn(24, 8)
    for plan in (ParamPlan("w", (24, 8), 0), ParamPlan("w", (24, 8), 1),
                 ParamPlan("w", (24, 8), 0, segments=(8, 4, 12))):
        out = torch.full_like(full, float("nan"))
        for rank in range(tp):
            shard = plan.take_shard(full, rank, tp)
            segments = None if plan.segments is None else list(plan.segments)
            assert torch.equal(shard, shard_of(full, plan.dim, rank, tp, segments))
            assert shard.shape == plan.shard_shape(tp)
            plan.place_shard(out, shard, rank, tp)
        assert torch.equal(out, full)


def test_plans_record_fused_segments_and_replicated_parameters():
    cfg = HybridConfig(vocab_size=64, hidden_size=64, num_layers=3, pattern="M*-", d_state=16, headdim=16,
                       ngroups=2, num_heads=4, num_kv_heads=2, ffn_hidden_size=128, tie_embeddings=True)
    plans = param_plans(cfg)
    in_proj = plans["1.mixer.in_proj.weight"]
    assert in_proj.dim == 0 and in_proj.segments is not None and sum(in_proj.segments) == in_proj.shape[0]
    assert plans["1.norm.weight"].dim is None  # replicated
    assert plans["0.tokens.weight"].dim == 0 and plans["3.mixer.down.weight"].dim == 1
    assert "4.output.weight" not in plans and tied_aliases(cfg) == {"4.output.weight": "0.tokens.weight"}
