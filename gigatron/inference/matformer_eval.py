"""`gigatron matformer eval`: validation loss against size for the uniform and Mix'n'Match submodels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatron.inference.mixnmatch import choose
from gigatron.models.layers.nested_ffn import ffn_granularity, submodel_config
from gigatron.models.registry import get_model_spec


@dataclass
class SubmodelResult:
    """One evaluated submodel."""

    kind: str  # "uniform" or "mix'n'match"
    fractions: list[float]
    params: int
    loss: float
    target: int | None = None

    @property
    def label(self) -> str:
        """Short description of the widths."""
        if self.kind == "uniform":
            return f"uniform {self.fractions[0]:g}"
        from gigatron.inference.mixnmatch import Candidate

        return Candidate(tuple(self.fractions), self.params, 0).describe()


def mixnmatch_targets(model_cfg: Any, per_interval: int) -> list[int]:
    """Parameter targets evenly spaced strictly between consecutive uniform submodel sizes."""
    spec = get_model_spec(type(model_cfg).family)
    sizes = [spec.num_params(submodel_config(model_cfg, g)) for g in sorted(model_cfg.matformer.granularities)]
    return [round(lo + (hi - lo) * i / (per_interval + 1)) for lo, hi in zip(sizes, sizes[1:], strict=False)
            for i in range(1, per_interval + 1)]


def evaluate_submodels(ckpt: str | Path, per_interval: int = 2, targets: list[int] | None = None,
                       batches: int | None = None, log=print, checksums: bool = True) -> list[SubmodelResult]:
    """Validation loss of every uniform granularity and of the heuristic's choice for each target.
    `checksums`: check the checkpoint's sha256s against its manifest (its sizes always)."""
    from gigatron.checkpoint.reader import model_from_checkpoint, open_checkpoint
    from gigatron.inference.lm_eval import lm_loss, validation_batches

    source = open_checkpoint(ckpt, checksums)
    model_cfg = source.cfg.model
    if getattr(model_cfg, "matformer", None) is None:
        raise ValueError(f"{source.path}: no model.matformer section; only MatFormer checkpoints have submodels")
    spec = get_model_spec(type(model_cfg).family)
    model = model_from_checkpoint(source)
    data = validation_batches(source.cfg, batches)
    layers = len(model_cfg.ffn_sizes)
    plan: list[tuple[str, list[float], int | None]] = [
        ("uniform", [float(g)] * layers, None) for g in sorted(model_cfg.matformer.granularities)]
    seen = {tuple(f) for _, f, _ in plan}
    for target in targets if targets is not None else mixnmatch_targets(model_cfg, per_interval):
        chosen, _ = choose(model_cfg, target)
        if chosen.fractions not in seen:
            seen.add(chosen.fractions)
            plan.append(("mix'n'match", list(chosen.fractions), target))
    results = []
    for kind, fractions, target in plan:
        with ffn_granularity(model, fractions):
            loss = lm_loss(model, data)
        params = spec.num_params(submodel_config(model_cfg, fractions))
        results.append(SubmodelResult(kind, fractions, params, loss, target))
        log(f"[eval] {results[-1].label}: {params / 1e6:.3f}M parameters, validation loss {loss:.4f}")
    return sorted(results, key=lambda r: r.params)


def write_report(results: list[SubmodelResult], out: Path, title: str) -> None:
    """eval.json, eval.md (table) and params_vs_loss.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps([r.__dict__ for r in results], indent=1))
    lines = [f"# {title}", "", "| submodel | FFN widths | parameters | validation loss |", "|---|---|---:|---:|"]
    for r in results:
        lines.append(f"| {r.kind} | {r.label} | {r.params:,} | {r.loss:.4f} |")
    (out / "eval.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for kind, style in (("uniform", "o-"), ("mix'n'match", "s")):
        chosen = [r for r in results if r.kind == kind]
        if chosen:
            ax.plot([r.params / 1e6 for r in chosen], [r.loss for r in chosen], style, label=kind)
    ax.set(xlabel="parameters (M)", ylabel="validation loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "params_vs_loss.png", dpi=110)
    plt.close(fig)
