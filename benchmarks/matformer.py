"""MatFormer vs independently trained models, and speculative decoding with a submodel draft (CPU scale).

Trains configs/matformer/small.yaml (sum mode: every granularity each step) and, with the same
seed, data order and token budget, ordinary models of the same shape at FFN widths 1/4, 1/2 and 1
of d_ff. All models are then evaluated on the same validation batches: every uniform MatFormer
submodel, the Mix'n'Match submodels between them (`gigatron matformer eval`'s heuristic), and the
independent models. Speculative decoding: greedy continuations of validation prompts by the full
MatFormer, plain and with a submodel draft (k drafted tokens per round); the outputs are checked
to be identical, and acceptance rate and the wall-clock speedup (same process, same prompts) are
reported. Prints a markdown table and writes a PNG of parameters vs validation loss.

    python benchmarks/matformer.py [--steps 600] [--out runs/bench-matformer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.checkpoint.reader import load_checkpoint_model  # noqa: E402
from gigatron.inference.generation import generate  # noqa: E402
from gigatron.inference.lm_eval import lm_loss, validation_batches  # noqa: E402
from gigatron.inference.matformer_eval import evaluate_submodels  # noqa: E402
from gigatron.inference.speculative import speculative_generate  # noqa: E402
from gigatron.models.registry import get_model_spec  # noqa: E402

CONFIG = REPO / "configs" / "matformer" / "small.yaml"
INDEPENDENT = {0.25: 256, 0.5: 512, 1.0: 1024}  # granularity -> FFN width of the independent model


def pretrain(out: Path, overrides: list[str], threads: int = 2) -> float:
    """Train `out` from the small MatFormer config with `overrides` (unless already trained, e.g. a
    rerun of the benchmark); returns the seconds it took (0 when reused)."""
    if (out / "checkpoints" / "latest").is_file():
        return 0.0
    command = [sys.executable, "-m", "gigatron", "pretrain", "--config", str(CONFIG), "--set", f"output_dir={out}",
               "--set", "logging.progress_bar=false", "--set", "logging.tensorboard=false",
               "--set", "hardware.memory_check=false"]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    print(f"trained {out.name} in {seconds:.0f} s", flush=True)
    return seconds


def speculative(model, prompts: list[list[int]], new_tokens: int, draft: float, k: int) -> dict:
    start = time.perf_counter()
    plain = [generate(model, p, new_tokens, temperature=0) for p in prompts]
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    runs = [speculative_generate(model, p, new_tokens, draft_granularity=draft, draft_tokens=k) for p in prompts]
    fast_s = time.perf_counter() - start
    if [tokens for tokens, _ in runs] != plain:
        raise AssertionError(f"speculative decoding (draft {draft}, k={k}) changed the greedy output")
    drafted = sum(s.drafted for _, s in runs)
    accepted = sum(s.accepted for _, s in runs)
    tokens = sum(len(t) for t in plain)
    return {"draft": draft, "k": k, "acceptance": accepted / drafted, "plain_tokens_per_s": tokens / plain_s,
            "speculative_tokens_per_s": tokens / fast_s, "speedup": plain_s / fast_s,
            "full_passes_per_token": sum(s.target_passes for _, s in runs) / tokens}


def plot(rows: list[dict], independent: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    uniform = [r for r in rows if r["kind"] == "uniform"]
    mix = [r for r in rows if r["kind"] != "uniform"]
    ax.plot([r["params"] / 1e6 for r in uniform], [r["loss"] for r in uniform], "o-", label="MatFormer, uniform")
    ax.plot([r["params"] / 1e6 for r in mix], [r["loss"] for r in mix], "s", label="MatFormer, Mix'n'Match")
    ax.plot([r["params"] / 1e6 for r in independent], [r["loss"] for r in independent], "^--",
            label="trained independently")
    ax.set(xlabel="parameters (M)", ylabel="validation loss", title="MatFormer submodels vs independent models")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-matformer")
    parser.add_argument("--eval-batches", type=int, default=16, help="validation global batches")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "images" / "matformer_params_vs_loss.png")
    args = parser.parse_args()
    common = [f"train.steps={args.steps}", "train.eval_interval=0", "checkpoint.interval=0"]
    pretrain(args.out / "matformer", common)
    for g, width in INDEPENDENT.items():
        pretrain(args.out / f"independent-{g:g}", [*common, "model.matformer=null", f"model.ffn_hidden_size={width}"])

    rows = [r.__dict__ | {"label": r.label} for r in
            evaluate_submodels(args.out / "matformer", per_interval=2, batches=args.eval_batches, log=lambda *_: None)]
    independent = []
    for g in INDEPENDENT:
        cfg, model = load_checkpoint_model(args.out / f"independent-{g:g}")
        loss = lm_loss(model, validation_batches(cfg, args.eval_batches))
        independent.append({"granularity": g, "params": get_model_spec("gpt").num_params(cfg.model), "loss": loss})

    cfg, model = load_checkpoint_model(args.out / "matformer")
    batches = validation_batches(cfg, 2)
    prompts = [batches[0][0][i, :32].tolist() for i in range(min(args.prompts, batches[0][0].shape[0]))]
    torch.set_num_threads(2)
    decoding = [speculative(model, prompts, args.new_tokens, draft, k) for draft in (0.125, 0.25, 0.5) for k in (2, 4)]

    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, independent, args.plot)
    (args.out / "results.json").write_text(json.dumps({"submodels": rows, "independent": independent,
                                                       "decoding": decoding}, indent=1))
    by_g = {r["granularity"]: r for r in independent}
    print("\n| submodel | FFN widths | parameters | MatFormer loss | independent loss | difference |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        g = r["fractions"][0] if r["kind"] == "uniform" else None
        ind = by_g.get(g)
        other = f"{ind['loss']:.4f} | {r['loss'] - ind['loss']:+.4f}" if ind else "– | –"
        print(f"| {r['kind']} | {r['label']} | {r['params']:,} | {r['loss']:.4f} | {other} |")
    print("\n| draft granularity | k | acceptance | plain tok/s | speculative tok/s | speedup | full passes/token |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in decoding:
        print(f"| {d['draft']:g} | {d['k']} | {100 * d['acceptance']:.1f}% | {d['plain_tokens_per_s']:.0f} | "
              f"{d['speculative_tokens_per_s']:.0f} | {d['speedup']:.2f}× | {d['full_passes_per_token']:.2f} |")


if __name__ == "__main__":
    main()
