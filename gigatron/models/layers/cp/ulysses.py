"""DeepSpeed-Ulysses (Jacobs et al. 2023): all-to-all from sequence sharding to head sharding, attention
over the full sequence for 1/cp of the heads, and all-to-all back.

Heads (query and key/value) must divide by the group size. The gathered sequence is in rank order,
not in position order; the positions travel with it, so the mask stays exact for any layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gigatron.models.layers.cp.comm import all_gather_positions, all_to_all


def check_heads(heads: int, kv_heads: int, degree: int) -> None:
    """Raise unless Ulysses of `degree` can split these (local) heads."""
    if heads % degree or kv_heads % degree:
        raise ValueError(f"Ulysses over {degree} ranks needs the attention heads per TP rank ({heads} query, "
                         f"{kv_heads} key/value) to be divisible by {degree}; lower the Ulysses degree "
                         "(parallel.cp_ulysses) or use ring attention (parallel.cp_attention=ring)")


def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """[b, h, L_local, d] -> [b, h/cp, cp·L_local, d]."""
    return all_to_all(x, group, scatter_dim=1, gather_dim=2)


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """[b, h/cp, cp·L_local, d] -> [b, h, L_local, d]."""
    return all_to_all(x, group, scatter_dim=2, gather_dim=1)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, group, attend,
                      *, causal: bool = True, key_limit: int | None = None) -> torch.Tensor:
    """`attend(q, k, v, q_pos, k_pos, causal, key_limit)` over the full sequence, heads split over `group`."""
    check_heads(q.shape[1], k.shape[1], dist.get_world_size(group))
    full_positions = all_gather_positions(positions, group)
    q, k, v = (sequence_to_heads(t, group) for t in (q, k, v))
    out = attend(q, k, v, full_positions, full_positions, causal, key_limit)
    return heads_to_sequence(out, group)
