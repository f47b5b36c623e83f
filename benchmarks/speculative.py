"""Speculative decoding with a MatFormer submodel draft on a model where weight reads dominate.

A 308M-parameter GPT MatFormer (hidden 1024, 20 layers, 16 heads / 4 KV heads, SwiGLU d_ff 4096,
vocabulary 2048, fp32, batch 1, 2 CPU threads). Untrained: this machine cannot train it, so its
acceptance rates are those of random weights; the per-pass costs do not depend on training, and
the cost model below turns any acceptance rate (e.g. the trained 5M MatFormer's, measured by
benchmarks/matformer.py) into the speedup it gives at this size:

    greedy speedup = E[tokens per round] / (k · c_draft + c_verify(k + 1)),
    E[tokens per round] = (1 − α^(k+1)) / (1 − α)       (Leviathan et al. 2023, Eq. 1)

with costs in units of one full-model single-token pass.

    python benchmarks/speculative.py [--new-tokens 32] [--prompts 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gigatron.config import load_config  # noqa: E402
from gigatron.inference.cached import forward_cached, new_caches  # noqa: E402
from gigatron.inference.generation import generate  # noqa: E402
from gigatron.inference.speculative import speculative_generate  # noqa: E402
from gigatron.models.layers.factory import LayerFactory  # noqa: E402
from gigatron.models.layers.init import initialize_parameters  # noqa: E402
from gigatron.models.layers.nested_ffn import cached_submodel_weights, ffn_granularity  # noqa: E402
from gigatron.models.registry import build_model  # noqa: E402

SHAPE = ["model.hidden_size=1024", "model.num_layers=20", "model.num_heads=16", "model.num_kv_heads=4",
         "model.ffn_hidden_size=4096", "model.matformer.blocks=1"]
DRAFTS = (0.125, 0.25, 0.5)
# The trained 5M MatFormer's greedy acceptance at k = 2 (docs/benchmarks.md, "MatFormer").
TRAINED_ACCEPTANCE = {0.125: 0.592, 0.25: 0.728, 0.5: 0.858}


def pass_ms(model, tokens: int, granularity: float, reps: int = 8) -> float:
    """Milliseconds of one cached forward of `tokens` new tokens after a 64-token context."""
    caches = new_caches(model, 1, 256, "cpu", torch.float32)
    forward_cached(model, torch.randint(0, 2048, (1, 64)), caches)
    lengths = [c.length if c is not None else None for c in caches]
    ids = torch.randint(0, 2048, (1, tokens))

    def once() -> None:
        with ffn_granularity(model, granularity):
            forward_cached(model, ids, caches)
        for cache, length in zip(caches, lengths, strict=True):
            if cache is not None:
                cache.length = length

    once()
    start = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - start) / reps * 1000


def expected_tokens(alpha: float, k: int) -> float:
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(REPO / "configs" / "matformer" / "small.yaml", SHAPE)
    model = build_model(cfg.model, LayerFactory())
    initialize_parameters(model, 0)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{params / 1e6:.0f}M parameters, fp32, {torch.get_num_threads()} threads")

    with torch.no_grad(), cached_submodel_weights(model):
        full = pass_ms(model, 1, 1.0)
        verify = {k: pass_ms(model, k + 1, 1.0) for k in (1, 2, 3, 4)}
        draft = {g: pass_ms(model, 1, g) for g in DRAFTS}
    print("\n| pass | ms | × full single-token pass |\n|---|---|---|")
    print(f"| full model, 1 token | {full:.1f} | 1.00 |")
    for k, ms in verify.items():
        print(f"| full model, {k + 1} tokens (verify k = {k}) | {ms:.1f} | {ms / full:.2f} |")
    for g, ms in draft.items():
        print(f"| draft {g:g}, 1 token | {ms:.1f} | {ms / full:.2f} |")

    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 2048, (24,), generator=generator).tolist() for _ in range(args.prompts)]
    start = time.perf_counter()
    plain = [generate(model, p, args.new_tokens, temperature=0) for p in prompts]
    plain_s = time.perf_counter() - start
    tokens = sum(len(t) for t in plain)
    print(f"\nplain greedy: {tokens / plain_s:.2f} tokens/s")
    print("\n| draft | k | acceptance (untrained) | speculative tok/s | measured speedup | full passes/token "
          "| model speedup at this α | model speedup at the trained 5M model's α | α needed for 1.5× |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g in DRAFTS:
        for k in (1, 2, 3):
            start = time.perf_counter()
            runs = [speculative_generate(model, p, args.new_tokens, draft_granularity=g, draft_tokens=k)
                    for p in prompts]
            fast_s = time.perf_counter() - start
            if [t for t, _ in runs] != plain:
                raise AssertionError(f"draft {g}, k={k} changed the greedy output")
            alpha = sum(s.accepted for _, s in runs) / max(1, sum(s.drafted for _, s in runs))
            cost = (k * draft[g] + verify[k]) / full
            trained = TRAINED_ACCEPTANCE[g]
            needed = next((a / 100 for a in range(0, 101) if expected_tokens(a / 100, k) / cost >= 1.5), None)
            print(f"| {g:g} | {k} | {100 * alpha:.1f}% | {tokens / fast_s:.2f} | {plain_s / fast_s:.2f}× "
                  f"| {sum(s.target_passes for _, s in runs) / tokens:.2f} | {expected_tokens(alpha, k) / cost:.2f}× "
                  f"| {expected_tokens(trained, k) / cost:.2f}× | {'unreachable' if needed is None else f'{needed:.2f}'} |",
                  flush=True)
    best = max(((k + 1) / ((k * draft[g] + verify[k]) / full), g, k) for g in DRAFTS for k in (1, 2, 3))
    print(f"\nupper bound (every draft accepted): {best[0]:.2f}× at draft {best[1]:g}, k = {best[2]}")


if __name__ == "__main__":
    main()
