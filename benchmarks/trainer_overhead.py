"""Throughput of `gigatron pretrain` against a hand-written PyTorch loop on the same model.

Both train the smoke GPT (1 process, fp32, CPU) with the same batch, AdamW, clipping and schedule.
The trainer runs as the real command in a subprocess; its throughput is measured from the wall
clock stamps in metrics.jsonl, so everything between steps (logging, signal agreement, DeepSpeed)
counts; each side reports the median step interval after warm-up. Rounds alternate trainer and hand loop so machine drift hits both alike.
The hand loop uses the trainer's optimizer (torch's fused AdamW) unless `--hand-optimizer default`
(torch's default AdamW, a Python loop over parameters on the CPU), so the ratio is the trainer's
overhead alone.

    python benchmarks/trainer_overhead.py [--steps 60] [--rounds 3]
    python benchmarks/trainer_overhead.py --steps 40 --set model.hidden_size=512 --set model.num_layers=8 \\
        --set model.num_heads=8 --set model.num_kv_heads=8 --set model.ffn_hidden_size=1536 \\
        --set data.seq_len=512 --set train.micro_batch_size=2 --set train.global_batch_size=4   # ~30M
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config, validate_config  # noqa: E402
from gigatron.data.build import build_lm_data  # noqa: E402
from gigatron.data.loader import GlobalBatchLoader  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.registry import build_model  # noqa: E402
from gigatron.pretrain.schedule import lr_at  # noqa: E402

CONFIG = REPO / "configs" / "gpt" / "smoke.yaml"
WARMUP_STEPS = 10


def overrides(steps: int, output_dir: str) -> list[str]:
    return [f"train.steps={steps}", "train.eval_interval=0", "checkpoint.interval=0",
            "checkpoint.save_final=false", "checkpoint.resume=none", f"output_dir={output_dir}"]


def steady_tokens_per_s(stamps: list[float], tokens_per_step: int) -> float:
    """Tokens per second from the median step-to-step interval after warm-up.

    The median ignores the seconds-long stalls that neighbours on a shared 2-core machine cause,
    which otherwise swing a throughput ratio by +-20% from one round to the next.
    """
    intervals = [b - a for a, b in itertools.pairwise(stamps[WARMUP_STEPS - 1:])]
    return tokens_per_step / statistics.median(intervals)


def trainer_tokens_per_s(steps: int, extra: list[str]) -> float:
    """Steady-state tokens/s of the real command, from its metrics' wall-clock stamps."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "gigatron", "pretrain", "--config", str(CONFIG)]
        for item in [*overrides(steps, out), *extra]:
            command += ["--set", item]
        subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    return steady_tokens_per_s([r["time"] for r in train], train[0]["tokens"])  # tokens after step 1


def hand_loop_tokens_per_s(steps: int, extra: list[str], fused: bool = True) -> float:
    """The same training written as a plain PyTorch loop."""
    cfg = validate_config(load_config(CONFIG, [*overrides(steps, "unused"), *extra]), world_size=1)
    t = cfg.train
    data = build_lm_data(cfg.data)
    loader = GlobalBatchLoader(data.train, t.global_batch_size, t.micro_batch_size, 0, 1, t.seed,
                               weights=data.train_weights)
    torch.manual_seed(t.seed)
    model = build_model(cfg.model, LayerFactory())
    initialize_parameters(model, t.seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=t.lr, betas=t.betas, eps=t.eps,
                                  fused=fused)
    tokens_per_step = t.global_batch_size * cfg.data.seq_len
    stamps = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, t)
        micro_batches = loader.next_batch()
        for mb in micro_batches:
            inputs, labels = mb[:, :-1], mb[:, 1:]
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
            (loss / len(micro_batches)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # the trainer also reads the loss every step
        stamps.append(time.time())
    return steady_tokens_per_s(stamps, tokens_per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hand-optimizer", choices=["fused", "default"], default="fused",
                        help="the hand loop's AdamW: the trainer's fused one, or torch's default")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both sides (repeatable): another model size")
    args = parser.parse_args()
    params = sum(p.numel() for p in build_model(load_config(CONFIG, args.extra).model, LayerFactory()).parameters())
    print(f"smoke GPT config with {args.extra or 'no overrides'}: {params:,} parameters")
    ratios = []
    for round_index in range(args.rounds):
        ours = trainer_tokens_per_s(args.steps, args.extra)
        hand = hand_loop_tokens_per_s(args.steps, args.extra, fused=args.hand_optimizer == "fused")
        ratios.append(ours / hand)
        print(f"round {round_index + 1}: gigatron pretrain {ours:,.0f} tok/s, hand loop {hand:,.0f} tok/s, "
              f"ratio {ours / hand:.3f}", flush=True)
    print(f"median ratio over {args.rounds} rounds: {statistics.median(ratios):.3f} (targets: >= 0.90 for the smoke model, >= 0.97 at ~30M)")


if __name__ == "__main__":
    main()
