"""`gigatron matformer extract|eval`: standalone submodels and their losses from one MatFormer checkpoint.

    gigatron matformer extract runs/matformer-smoke --widths 0.25 --out ckpts/mf-quarter
    gigatron matformer extract runs/matformer-smoke --widths 0.25,0.25,0.5,0.5 --out ckpts/mf-mix
    gigatron matformer extract runs/matformer-smoke --target-params 1.6e6 --out ckpts/mf-1.6m
    gigatron matformer eval runs/matformer-smoke --out runs/matformer-smoke/eval
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gigatron.commands.checkpoint_args import add_skip_checksums
from gigatron.commands.outcome import run_verified


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Sub-commands of `gigatron matformer`."""
    sub = parser.add_subparsers(dest="matformer_command", required=True, metavar="SUBCOMMAND")
    extract = sub.add_parser("extract", help="write a submodel as an ordinary standalone checkpoint")
    extract.add_argument("ckpt", help="MatFormer checkpoint: run dir, checkpoints dir, step_* or consolidated dir")
    which = extract.add_mutually_exclusive_group(required=True)
    which.add_argument("--widths", help="one granularity for all FFNs (0.25) or one per FFN layer (0.25,0.5,...)")
    which.add_argument("--target-params", type=float, help="parameter budget: Mix'n'Match picks per-layer widths")
    extract.add_argument("--tolerance", type=float, default=0.02,
                         help="--target-params: accept a slope whose best model is within this fraction below "
                              "the target (default 0.02)")
    extract.add_argument("--out", required=True, help="new directory for the consolidated checkpoint")
    add_skip_checksums(extract)
    evaluate = sub.add_parser("eval", help="validation loss of the uniform and Mix'n'Match submodels; table + plot")
    evaluate.add_argument("ckpt", help="MatFormer checkpoint")
    evaluate.add_argument("--out", required=True, help="directory for eval.json, eval.md and params_vs_loss.png")
    evaluate.add_argument("--targets", help="comma-separated parameter targets for Mix'n'Match (default: evenly "
                                            "spaced between the uniform sizes)")
    evaluate.add_argument("--per-interval", type=int, default=2,
                          help="default targets per interval between consecutive uniform sizes (default 2)")
    evaluate.add_argument("--batches", type=int, default=None,
                          help="validation global batches (default: the run's train.eval_batches)")
    add_skip_checksums(evaluate)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: expected comma-separated numbers") from exc


def _extract(args: argparse.Namespace) -> None:
    from gigatron.checkpoint.reader import open_checkpoint
    from gigatron.inference.matformer_extract import extract
    from gigatron.inference.mixnmatch import choose

    # Opened (and its files hashed) once, for choosing the widths and for extracting.
    source = open_checkpoint(args.ckpt, not args.skip_checksums)
    if args.widths is not None:
        widths = _floats(args.widths, "--widths")
        fractions: float | list[float] = widths[0] if len(widths) == 1 else widths
    else:
        model_cfg = source.cfg.model
        if getattr(model_cfg, "matformer", None) is None:
            raise ValueError(f"{args.ckpt}: no model.matformer section; only MatFormer checkpoints have submodels")
        chosen, considered = choose(model_cfg, int(args.target_params), args.tolerance)
        print(f"[mix'n'match] target {int(args.target_params):,} parameters; alternatives considered "
              "(smallest slope first):")
        for cand in considered:
            mark = "*" if cand == chosen else " "
            gap = 100 * (1 - cand.params / args.target_params)
            print(f"  {mark} span {cand.span}: {cand.describe():40s} {cand.params:>14,} ({gap:.1f}% below)")
        fractions = list(chosen.fractions)
    extract(source, fractions, args.out)


def _evaluate(args: argparse.Namespace) -> None:
    from gigatron.inference.matformer_eval import evaluate_submodels, write_report

    targets = None if args.targets is None else [int(t) for t in _floats(args.targets, "--targets")]
    results = evaluate_submodels(args.ckpt, args.per_interval, targets, args.batches,
                                 checksums=not args.skip_checksums)
    write_report(results, Path(args.out), f"MatFormer submodels of {args.ckpt}")
    print(f"[eval] wrote {args.out}/eval.md, eval.json, params_vs_loss.png")


def run(args: argparse.Namespace) -> int:
    """Run a sub-command; bad input exits 2 with the reason, a failed verification 1."""
    work = (lambda: _extract(args)) if args.matformer_command == "extract" else (lambda: _evaluate(args))
    return run_verified(f"matformer {args.matformer_command}", work,
                        (FileNotFoundError, FileExistsError, ValueError, KeyError))
