"""TokenFormer growth vs training the final size from scratch, at CPU scale on the default corpus.

Both arms see the same tokens in the same order (one global data order, one cosine schedule over
the whole budget). The grown arm trains three sizes in turn, growing each stage's checkpoint with
`grow.checkpoint` (init preserve): Q/K/V/output tokens 32 -> 64 -> 128, FFN tokens 128 -> 256 ->
512, hidden 128, 4 layers. The scratch arm trains the final size for the whole budget. Compute is
the model's FLOPs per token (6N + attention, from the model spec) times the tokens each stage
trained. Reported: the validation-loss curves against compute (PNG) and the compute at which the
grown arm first reaches the scratch arm's final validation loss, as a fraction of the scratch arm's
compute (the paper reports about one third at its scale).

    python benchmarks/tokenformer_growth.py [--steps 600] [--out docs/images/tokenformer_growth.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config  # noqa: E402
from gigatron.models.registry import get_model_spec  # noqa: E402

CONFIG = REPO / "configs" / "tokenformer" / "smoke.yaml"
STAGES = [(32, 128), (64, 256), (128, 512)]  # (qkv/proj tokens, ffn tokens)
FRACTIONS = (0.25, 0.25, 0.5)  # share of the token budget per stage


def pretrain(out: Path, overrides: list[str]) -> None:
    command = [sys.executable, "-m", "gigatron", "pretrain", "--config", str(CONFIG),
               "--set", f"output_dir={out}", "--set", "logging.progress_bar=false",
               "--set", "logging.tensorboard=false"]
    for item in overrides:
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [rec for rec in map(json.loads, lines) if rec["kind"] == kind]


def flops_per_step(qkv: int, ffn: int, steps_common: list[str]) -> float:
    cfg = load_config(CONFIG, [*steps_common, f"model.qkv_tokens={qkv}", f"model.ffn_tokens={ffn}"])
    per_token = get_model_spec("tokenformer").flops_per_token(cfg.model, cfg.data.seq_len)
    return per_token * cfg.train.global_batch_size * cfg.data.seq_len


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="total optimizer steps of each arm")
    parser.add_argument("--eval-interval", type=int, default=25)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "tokenformer_growth.png")
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", f"train.eval_interval={args.eval_interval}", "train.eval_batches=4",
              "train.warmup_steps=30", "checkpoint.interval=0", "logging.interval=25", "data.num_workers=1"]
    ends = [round(sum(FRACTIONS[:i + 1]) * args.steps) for i in range(len(STAGES))]
    with tempfile.TemporaryDirectory(prefix="gigatron-growth-") as tmp:
        root = Path(tmp)
        # Scratch: the final size for the whole budget.
        qkv, ffn = STAGES[-1]
        pretrain(root / "scratch", [*common, f"model.qkv_tokens={qkv}", f"model.ffn_tokens={ffn}"])
        scratch_step = flops_per_step(qkv, ffn, common)
        scratch = [(r["step"] * scratch_step, r["loss"]) for r in records(root / "scratch", "valid")]
        # Grown: each stage stops at its share of the budget (exit_interval) and the next grows from it.
        grown, start, previous, boundary = [], 0, None, 0.0
        for (qkv, ffn), end in zip(STAGES, ends, strict=True):
            run = root / f"stage-{qkv}"
            overrides = [*common, f"model.qkv_tokens={qkv}", f"model.ffn_tokens={ffn}",
                         f"train.exit_interval={end - start}"]
            if previous is not None:
                overrides.append(f"grow.checkpoint={previous}")
            pretrain(run, overrides)
            step_flops = flops_per_step(qkv, ffn, common)
            done = boundary
            for rec in records(run, "valid"):
                if start < rec["step"] <= end:
                    grown.append((done + (rec["step"] - start) * step_flops, rec["loss"]))
            boundary += (end - start) * step_flops
            start, previous = end, run
    target = scratch[-1][1]
    reached = next((compute for compute, loss in grown if loss <= target), None)
    total_scratch, total_grown = scratch[-1][0], boundary
    print("| arm | stages (qkv, ffn tokens: steps) | total compute | final valid loss |")
    print("|---|---|---|---|")
    print(f"| scratch | {STAGES[-1]}: {args.steps} | {total_scratch:.3g} FLOPs | {scratch[-1][1]:.4f} |")
    stages = ", ".join(f"{s}: {e - b}" for s, b, e in zip(STAGES, [0, *ends[:-1]], ends, strict=True))
    print(f"| grown | {stages} | {total_grown:.3g} FLOPs ({total_grown / total_scratch:.2f}x) | {grown[-1][1]:.4f} |")
    if reached is None:
        print(f"grown arm never reached the scratch arm's final validation loss {target:.4f}")
    else:
        print(f"grown arm reached the scratch arm's final validation loss {target:.4f} at {reached:.3g} FLOPs: "
              f"{reached / total_scratch:.2f} of the scratch arm's compute")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(*zip(*scratch, strict=True), label=f"from scratch {STAGES[-1]}", marker=".")
    ax.plot(*zip(*grown, strict=True), label="grown " + " → ".join(str(s) for s in STAGES), marker=".")
    ax.set_xlabel("training compute (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.set_title("TokenFormer growth (preserve) vs scratch, default corpus")
    ax.legend()
    ax.grid(alpha=0.3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
