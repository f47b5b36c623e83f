"""One rank of the context-parallel attention exactness check (run under `gigatron launch --nproc 2|4`).

Every rank draws the same full-sequence q, k, v, takes its tokens (contiguous or zigzag, padded when
the length does not split), runs ring / Ulysses / hybrid attention, and compares its output and
its share of the q, k, v gradients with a naive attention that materialises the scores on the full
sequence (fp32): forward <= 1e-5, gradients <= 1e-4. Exits 1 listing every mismatch.
"""

from __future__ import annotations

import itertools
import math
import sys

import torch
import torch.distributed as dist

import gigatron.models.layers.blockwise_attention as blockwise
import gigatron.models.layers.cp.ring as ring_module
from gigatron.launcher.dist_env import DistEnv, exit_distributed, init_distributed
from gigatron.models.layers.blockwise_attention import memory_efficient_attention
from gigatron.models.layers.cp.layout import SequenceLayout, pad_to_multiple
from gigatron.models.layers.cp.ring import ring_attention
from gigatron.models.layers.cp.ulysses import ulysses_attention


def naive(q, k, v, causal):
    h = q.shape[1]
    k, v = k.repeat_interleave(h // k.shape[1], 1), v.repeat_interleave(h // v.shape[1], 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        length = q.shape[2]
        scores = scores.masked_fill(~torch.ones(length, length, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


def groups_for_hybrid(world: int, ulysses: int):
    """(my Ulysses group, my ring group): Ulysses over consecutive ranks, rings across them."""
    rank, mine = dist.get_rank(), {}
    for start in range(0, world, ulysses):
        ranks = list(range(start, start + ulysses))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine["ulysses"] = group
    for offset in range(ulysses):
        ranks = list(range(offset, world, ulysses))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine["ring"] = group
    return mine["ulysses"], mine["ring"]


def check(kind: str, causal: bool, zigzag: bool, heads: int, kv_heads: int, length: int, hybrid_groups) -> list[str]:
    world, rank = dist.get_world_size(), dist.get_rank()
    layout = SequenceLayout(rank, world, zigzag)
    generator = torch.Generator().manual_seed(length * 7 + heads)
    q = torch.randn(2, heads, length, 16, generator=generator)
    k = torch.randn(2, kv_heads, length, 16, generator=generator)
    v = torch.randn(2, kv_heads, length, 16, generator=generator)
    weights = torch.randn(2, heads, length, 16, generator=generator)
    full = [t.clone().requires_grad_(True) for t in (q, k, v)]
    reference = naive(*full, causal)
    reference_grads = torch.autograd.grad((reference * weights).sum(), full)

    padded = [pad_to_multiple(t, layout.pieces, dim=2)[0] for t in (q, k, v, weights)]
    key_limit = None if padded[0].shape[2] == length else length
    local = [layout.shard(t, dim=2).clone().requires_grad_(i < 3) for i, t in enumerate(padded)]
    positions = layout.positions(padded[0].shape[2])
    if kind == "ring":
        out = ring_attention(*local[:3], positions, positions, dist.group.WORLD, causal=causal, key_limit=key_limit)
    elif kind == "ulysses":
        def single(q, k, v, q_pos, k_pos, causal, key_limit):
            return memory_efficient_attention(q, k, v, causal=causal, q_pos=q_pos, k_pos=k_pos, key_limit=key_limit)

        out = ulysses_attention(*local[:3], positions, dist.group.WORLD, single, causal=causal, key_limit=key_limit)
    else:
        ulysses_group, ring_group = hybrid_groups

        def across(q, k, v, q_pos, k_pos, causal, key_limit):
            return ring_attention(q, k, v, q_pos, k_pos, ring_group, causal=causal, key_limit=key_limit)

        out = ulysses_attention(*local[:3], positions, ulysses_group, across, causal=causal, key_limit=key_limit)
    grads = torch.autograd.grad((out * local[3]).sum(), local[:3])
    real = positions < length  # padded tokens are not compared
    name = f"{kind} causal={causal} zigzag={zigzag} heads={heads}/{kv_heads} L={length} rank {rank}"
    problems = []
    expected = reference.detach().index_select(2, positions[real])
    diff = float((out.detach()[:, :, real] - expected).abs().max())
    if diff > 1e-5:
        problems.append(f"{name}: forward differs by {diff:.3g}")
    for what, ours, theirs in zip("qkv", grads, reference_grads, strict=True):
        diff = float((ours[:, :, real] - theirs.index_select(2, positions[real])).abs().max())
        if diff > 1e-4:
            problems.append(f"{name}: d{what} differs by {diff:.3g}")
    return problems


def main() -> int:
    env = DistEnv.from_environ()
    init_distributed(env)
    world = dist.get_world_size()
    hybrid_groups = groups_for_hybrid(world, 2) if world == 4 else None
    kinds = ["ring", "ulysses"] + (["hybrid"] if hybrid_groups else [])
    problems = []
    # Whole blocks, then K/V moving in 3-token chunks and key runs cut into 2-token pieces.
    for transfer, run in ((ring_module._CHUNK, blockwise._MAX_RUN), (3, 2)):
        ring_module._CHUNK, blockwise._MAX_RUN = transfer, run
        for kind, causal, zigzag in itertools.product(kinds, (True, False), (True, False)):
            for heads, kv_heads in ((4, 4), (8, 4)):
                # A length that splits into 2·cp chunks, and one that needs padding.
                for length in (8 * world, 8 * world + 3):
                    problems += check(kind, causal, zigzag, heads, kv_heads, length, hybrid_groups)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    exit_distributed(main())
