"""`gigatron generate --ckpt RUN_OR_TAG --prompt TEXT`: sample from a trained checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gigatron.commands.checkpoint_args import add_skip_checksums
from gigatron.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `gigatron generate`."""
    parser.add_argument("--ckpt", required=True, help="run dir, checkpoints dir or step_NNNNNNNN dir")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="stops earlier at eos (default 100)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--draft-granularity", type=float, default=None,
                        help="MatFormer checkpoints: speculative decoding with the submodel at this FFN granularity "
                             "as the draft (greedy or sampled: the output follows the full model's distribution)")
    parser.add_argument("--draft-tokens", type=int, default=4, help="tokens drafted per round (default 4)")
    parser.add_argument("--tokenizer", help="a sentencepiece .model file or 'bytes'; default: the one recorded in "
                                            "the training data's manifest.json")
    add_skip_checksums(parser)


def load_run_tokenizer(cfg: Config, tag: Path, spec: str | None) -> Any:
    """`spec` if given, else the tokenizer of the run's training data; checked against the checkpoint."""
    from gigatron.checkpoint.reader import training_manifest
    from gigatron.data.manifest import load_text_dataset
    from gigatron.data.sp_tokenizer import load_tokenizer, tokenizer_from_manifest

    if spec is not None:
        tokenizer = load_tokenizer(spec)
    else:
        manifest = training_manifest(cfg)
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} (the training data of {tag}) is missing, so the tokenizer is "
                                    "unknown; pass --tokenizer (a sentencepiece .model file or 'bytes')")
        tokenizer = tokenizer_from_manifest(load_text_dataset(manifest.parent).tokenizer)
    trained_with = json.loads((tag / "trainer_state.json").read_text()).get("tokenizer_fingerprint") or None
    if trained_with is not None and tokenizer.fingerprint != trained_with:
        raise ValueError(f"the tokenizer has fingerprint {tokenizer.fingerprint}, but {tag} was trained with "
                         f"{trained_with} (trainer_state.json); pass the run's tokenizer with --tokenizer")
    return tokenizer


def _speculate(cfg: Config, model: Any, prompt: list[int], args: argparse.Namespace, eos_id: int
               ) -> tuple[list[int], str]:
    from gigatron.inference.speculative import speculative_generate

    nesting = getattr(cfg.model, "matformer", None)
    if nesting is None:
        raise ValueError("--draft-granularity needs a MatFormer checkpoint (model.matformer); this one has none")
    new, stats = speculative_generate(model, prompt, args.max_new_tokens, draft_granularity=args.draft_granularity,
                                      draft_tokens=args.draft_tokens, eos_id=eos_id, temperature=args.temperature,
                                      top_k=args.top_k if args.temperature > 0 else None, seed=args.seed)
    return new, (f"; draft granularity {args.draft_granularity:g}: {stats.accepted}/{stats.drafted} drafted tokens "
                 f"accepted ({100 * stats.acceptance_rate:.1f}%), {stats.target_passes} full-model passes")


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint, encode the prompt, print the continuation; tokens/s on stderr."""
    from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint, resolve_checkpoint
    from gigatron.inference.generation import generate
    from gigatron.models.registry import get_model_spec

    try:
        tag = resolve_checkpoint(args.ckpt)
        ckpt = open_checkpoint(tag, checksums=not args.skip_checksums)
        family = type(ckpt.cfg.model).family
        if get_model_spec(family).task != "lm":
            raise ValueError(f"{tag}: model.family={family} is not a language model; `gigatron generate` samples "
                             "text from language-model checkpoints (`gigatron sample` draws images from diffusion "
                             "ones)")
        cfg, model = ckpt.cfg, model_from_checkpoint(ckpt)
        tokenizer = load_run_tokenizer(cfg, tag, args.tokenizer)
        # Shards end every document with eos, so in training a document starts right after an eos.
        prompt = [tokenizer.eos_id, *tokenizer.encode(args.prompt)]
        start = time.perf_counter()
        if args.draft_granularity is None:
            new = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           seed=args.seed, eos_id=tokenizer.eos_id)
            speculation = ""
        else:
            new, speculation = _speculate(cfg, model, prompt, args, tokenizer.eos_id)
        elapsed = time.perf_counter() - start
    except (FileNotFoundError, ValueError) as exc:  # ConfigError and DataError are ValueErrors
        print(f"gigatron generate: {exc}", file=sys.stderr)
        return 2
    text = tokenizer.decode([t for t in new if t != tokenizer.eos_id])
    print(args.prompt + text)
    print(f"[generate] {len(new)} tokens in {elapsed:.2f} s ({len(new) / max(elapsed, 1e-9):.1f} tokens/s, "
          f"prompt {len(prompt)} tokens, {tag}){speculation}", file=sys.stderr)
    return 0
