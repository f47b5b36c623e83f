"""`gigatron plan` and the trainer's memory check: the planned peak against a measured one, DeepSpeed's
state bytes, exit codes, bad targets, the layout search, and a run refused before it allocates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gigatron.config import ConfigError, load_config
from gigatron.planning.memory import plan_memory, state_bytes
from gigatron.planning.plan import Target, plan_run, search_layouts
from tests.conftest import REPO, SMOKE, read_metrics, run_pretrain


def _plan_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gigatron", "plan", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_state_bytes_follow_deepspeed_per_precision_and_zero_stage():
    # Mixed precision without ZeRO: bf16 weights and gradients, fp32 master copy and two moments.
    bf16 = state_bytes("bf16", 0, pipeline=False)
    assert (bf16.weights, bf16.gradients_dynamic, bf16.optimizer) == (2, 2, 16 - 2 - 2)
    # ZeRO-3 partitions all of it; fp32 ZeRO-0 is torch's AdamW on the module.
    z3 = state_bytes("bf16", 3, pipeline=False)
    assert z3.weights_partitioned and z3.gradients_partitioned and z3.optimizer_partitioned
    fp32 = state_bytes("fp32", 0, pipeline=False)
    assert (fp32.weights, fp32.gradients_dynamic, fp32.optimizer) == (4, 4, 8)


def test_more_data_parallel_ranks_shrink_zero_state_but_not_activations():
    cfg = load_config(SMOKE, ["parallel.zero_stage=3"])
    cfg.parallel.dp = 1
    [one] = plan_memory(cfg, device="cpu")
    cfg.parallel.dp = 4
    cfg.train.global_batch_size = 16
    [four] = plan_memory(cfg, device="cpu")
    assert four.optimizer < one.optimizer / 3
    assert four.activations == one.activations


def test_recompute_and_sequence_parallel_shrink_the_planned_activations():
    target = Target(gpus=2, memory_bytes=2**40, peak_flops=1e14, mfu=0.4, overhead_bytes=0, device="cpu")
    base = plan_run(load_config(SMOKE, ["parallel.tp=2"]), target).peak.activations
    sp = plan_run(load_config(SMOKE, ["parallel.tp=2", "parallel.sequence_parallel=true"]), target).peak.activations
    full = plan_run(load_config(SMOKE, ["parallel.tp=2", "train.recompute=full"]), target).peak.activations
    assert sp < base and full < base / 2


def test_the_chunked_loss_shrinks_the_planned_peak_and_costs_one_more_output_forward():
    target = Target(gpus=1, memory_bytes=2**40, peak_flops=1e14, mfu=0.4, overhead_bytes=0, device="cpu")
    vocab, tokens = 16384, 4 * 128  # micro-batch 4 of 128 tokens
    plain = plan_run(load_config(SMOKE, [f"model.vocab_size={vocab}"]), target)
    chunked = plan_run(load_config(SMOKE, [f"model.vocab_size={vocab}", "train.loss_chunk_tokens=64"]), target)
    logits = tokens * vocab * 4
    # The plain path keeps the fp32 log-softmax for backward and makes the softmax gradient beside it.
    assert plain.peak.allocated - chunked.peak.allocated > 1.5 * logits
    assert plain.throughput.recompute_cost == 1.0
    extra = 2 * 128 * vocab / chunked.throughput.flops_per_token
    assert chunked.throughput.recompute_cost == pytest.approx(1.0 + extra)
    assert chunked.throughput.step_time_s == pytest.approx(plain.throughput.step_time_s * (1 + extra))


@pytest.mark.slow  # a training run (~15 s)
def test_the_plan_matches_a_measured_peak_within_ten_percent(tmp_path, corpus_ready):
    overrides = ["train.steps=2", "checkpoint.save_final=false", "train.eval_interval=0", "logging.memory_trace=true"]
    proc = run_pretrain(tmp_path, overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [record] = read_metrics(tmp_path, "memory")
    [measured] = record["peak_bytes"]
    cfg = load_config(SMOKE, overrides)
    cfg.parallel.dp = 1
    [planned] = plan_memory(cfg, device="cpu")
    assert abs(planned.allocated / measured - 1) < 0.10, (planned, measured)


def test_plan_prints_a_breakdown_and_exits_by_fit(tmp_path):
    fits = _plan_command("--config", str(SMOKE), "--device", "cpu")
    assert fits.returncode == 0, fits.stderr[-2000:]
    for part in ("parameters", "gradients", "optimizer states", "activations", "communication", "tokens/s"):
        assert part in fits.stdout
    small = _plan_command("--config", str(SMOKE), "--device", "cpu", "--gpu-memory", "10MiB")
    assert small.returncode == 3 and "DOES NOT FIT" in small.stdout


def test_plan_json_and_search(tmp_path):
    proc = _plan_command("--config", str(SMOKE), "--gpus", "2", "--search", "--top", "4", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["fits"] and out["stages"][0]["total"] > out["stages"][0]["activations"] > 0
    assert 0 < len(out["search"]) <= 4
    times = [plan["step_time_s"] for plan in out["search"]]
    assert times == sorted(times)
    assert all(plan["fits"] and plan["gpus"] == 2 for plan in out["search"])


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0"], "--gpus 0"),
    (["--mfu", "1.5"], "--mfu 1.5"),
    (["--set", "hardware.gpu_memory_gib=-1"], "hardware.gpu_memory_gib=-1"),
    (["--gpus", "3", "--set", "parallel.tp=2"], "not divisible"),
])
def test_plan_targets_that_make_no_sense_are_config_errors(args, message):
    proc = _plan_command("--config", str(SMOKE), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_a_negative_memory_size_is_refused_by_the_parser():
    proc = _plan_command("--config", str(SMOKE), "--gpu-memory=-80GiB")
    assert proc.returncode == 2 and "is not a size" in proc.stderr


def test_search_finds_layouts_that_fit_when_the_configs_does_not():
    cfg = load_config(SMOKE)
    target = Target(gpus=2, memory_bytes=int(40 * 2**20), peak_flops=1e14, mfu=0.4, overhead_bytes=0, device="cpu")
    assert not plan_run(cfg, target).fits
    found = search_layouts(cfg, target)
    assert found and all(plan.fits for plan in found)


def test_plan_run_refuses_a_bad_layout():
    with pytest.raises(ConfigError, match="parallel.tp"):
        plan_run(load_config(SMOKE, ["parallel.tp=3"]), Target(3, 2**40, 1e14, 0.4, 0, "cpu"))


def test_a_model_whose_forward_reads_tensor_values_is_named_not_planned(monkeypatch):
    """A forward that branches on a value (a plugin's, say) cannot run on fake tensors: a ConfigError
    naming the family, which the trainer reports instead of checking memory."""
    import gigatron.models.gpt.model as gpt_model
    from gigatron.planning import memory
    from gigatron.planning.stage_trace import UnplannableModel

    forward = gpt_model.Block.forward

    def reading(self, x):
        if bool(x.isfinite().all()):  # reads a value
            return forward(self, x)
        return x

    monkeypatch.setattr(gpt_model.Block, "forward", reading)
    monkeypatch.setattr(memory, "_TRACES", {})
    with pytest.raises(UnplannableModel, match="model.family=gpt cannot be planned from shapes"):
        plan_run(load_config(SMOKE), Target(1, 2**40, 1e14, 0.4, 0, "cpu"))


@pytest.mark.slow  # a refused run (~10 s)
def test_the_trainer_refuses_a_run_that_does_not_fit_before_building_it(tmp_path, corpus_ready):
    proc = run_pretrain(tmp_path, ["hardware.memory_check=true", "hardware.cpu_memory_gib=0.04"])
    assert proc.returncode == 2
    assert "hardware.memory_check=false" in proc.stderr and "nearest layouts that fit" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
