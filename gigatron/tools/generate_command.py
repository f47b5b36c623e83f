"""`gigatron generate --ckpt RUN_OR_TAG --prompt TEXT`: sample from a trained checkpoint."""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron generate`."""
    parser.add_argument("--ckpt", required=True, help="run dir, checkpoints dir or step_NNNNNNNN dir")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", help="tokenizer spec (a .model file or 'bytes'); default: the training data's")


def _tokenizer(cfg, spec: str | None):
    from gigatron.data.build import dataset_roots
    from gigatron.data.manifest import load_text_dataset
    from gigatron.data.sp_tokenizer import load_tokenizer, tokenizer_from_manifest

    if spec is not None:
        return load_tokenizer(spec)
    roots, _ = dataset_roots(cfg.data)
    return tokenizer_from_manifest(load_text_dataset(roots[0]).tokenizer)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, encode the prompt, print the continuation; tokens/s on stderr."""
    from gigatron.models.generation import generate
    from gigatron.tools.checkpoint_io import load_checkpoint_model

    try:
        cfg, model = load_checkpoint_model(args.ckpt)
        tokenizer = _tokenizer(cfg, args.tokenizer)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"gigatron generate: {exc}", file=sys.stderr)
        return 2
    # Shards end every document with eos, so in training a document starts right after an eos.
    prompt = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]
    start = time.perf_counter()
    new = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   seed=args.seed, eos_id=tokenizer.eos_id)
    elapsed = time.perf_counter() - start
    print(args.prompt + tokenizer.decode(new))
    print(f"[generate] {len(new)} tokens in {elapsed:.2f} s ({len(new) / elapsed:.1f} tokens/s)", file=sys.stderr)
    return 0
