"""A GPT block's activations against Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models"), per tensor-parallel size, with and without sequence parallelism.

The paper counts, per layer in 16-bit, 34·sbh + 5·as²b bytes without parallelism, sbh(10 + 24/t) +
5as²b/t with tensor parallelism of size t, and 34·sbh/t (+ 5as²b/t) with sequence parallelism too;
selective recomputation drops the 5as²b term (the attention scores). Here one block of gigatron's GPT
is built for TP rank 0 of a `t`-rank layout on a fake process group, under FakeTensorMode, in bf16,
and `saved_for_backward_bytes` counts what its forward keeps, attributed to the module that saved it.
Everything is reported in units of sbh bytes.

    .venv/bin/python benchmarks/korthikanti.py            # seconds, no memory
"""

from __future__ import annotations

import argparse
import functools

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from gigatron.config.loader import load_config
from gigatron.models.gpt.model import Block
from gigatron.models.layers.factory import LayerFactory
from gigatron.models.layers.recompute import apply_recompute
from gigatron.planning.activations import saved_for_backward
from gigatron.planning.fake_world import fake_process_layout

GROUPS = {  # module name -> the paper's part of a layer
    "attn_norm": "norms", "mlp_norm": "norms",
    "attn.q": "attention", "attn.k": "attention", "attn.v": "attention", "attn": "attention",
    "attn.core": "attention", "attn.o": "attention",
    "mlp.gate": "MLP", "mlp.up": "MLP", "mlp.down": "MLP", "mlp": "MLP",
    "": "residual, dropout", "dropout": "residual, dropout",
}


def block_bytes(t: int, sp: bool, recompute: str, hidden: int, heads: int, kv_heads: int, ffn: int,
                seq: int, batch: int) -> dict[str, int]:
    """Bytes one block keeps for backward on TP rank 0, by the paper's parts."""
    cfg = load_config("configs/gpt/smoke.yaml", [
        f"model.hidden_size={hidden}", f"model.num_heads={heads}", f"model.num_kv_heads={kv_heads}",
        f"model.ffn_hidden_size={ffn}", f"parallel.tp={t}", f"parallel.sequence_parallel={str(sp).lower()}"])
    with fake_process_layout(cfg.parallel, world_size=t) as layout, FakeTensorMode():
        block = Block(cfg.model, LayerFactory(layout, device="cpu", params_dtype=torch.bfloat16))
        if recompute != "none":  # "full", or "selective:<module>,<module>"; the block is a layer of a model
            granularity, _, modules = recompute.partition(":")
            apply_recompute(torch.nn.Sequential(block), granularity, modules=modules.split(","))  # hooks the block
        names: list[str] = [""]
        def enter(name: str):
            return lambda module, args: names.append(name)

        def leave(module, args, output) -> None:
            names.pop()

        for name, module in block.named_modules():
            module.register_forward_pre_hook(enter(name))
            module.register_forward_hook(leave)
        x = torch.randn(batch, seq // (t if sp else 1), hidden, dtype=torch.bfloat16, requires_grad=True)
        return saved_for_backward(functools.partial(block, x), exclude=block.parameters(),
                                  label=lambda: GROUPS.get(names[-1], names[-1]))


def paper(t: int, sp: bool) -> float:
    """Korthikanti's bytes per layer in units of sbh, without the attention-score term."""
    return 34 / t if sp else 10 + 24 / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=6144)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=64)
    parser.add_argument("--ffn", type=int, default=16384)  # 8/3·h rounded up to 256: Llama's SwiGLU width
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    sbh = args.seq * args.batch * args.hidden
    order = ["norms", "attention", "MLP", "residual, dropout"]
    print(f"| t | SP | recompute | {' | '.join(order)} | total | paper (no s² term) |")
    print("|---:|---|---|" + "---:|" * (len(order) + 2))
    for t in (1, 2, 4, 8):
        for sp in ((False,) if t == 1 else (False, True)):
            for recompute in ("none", "selective:layernorm", "full"):
                parts = block_bytes(t, sp, recompute, args.hidden, args.heads, args.kv_heads, args.ffn,
                                    args.seq, args.batch)
                total = sum(parts.values()) / sbh
                cells = " | ".join(f"{parts.get(k, 0) / sbh:.2f}" for k in order)
                expected = {"none": paper(t, sp), "full": 2 / t if sp else 2}.get(recompute)
                paper_cell = "" if expected is None else f"{expected:.2f}"
                print(f"| {t} | {'yes' if sp else 'no'} | {recompute} | {cells} | {total:.2f} | {paper_cell} |",
                      flush=True)


if __name__ == "__main__":
    main()
