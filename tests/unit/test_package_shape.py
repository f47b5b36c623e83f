"""The shape of the package (docs/architecture.md): which package may import which, and commands without torch."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "gigatron"

# package -> the gigatron packages it may import (directly). Everything not listed is forbidden;
# the order is a layering, so no two packages can import each other.
ALLOWED: dict[str, set[str]] = {
    "launcher": set(),
    "config": set(),  # the family registry (config/families.py) names model modules by string
    "parallel": {"config"},
    "data": {"config", "launcher"},
    "models": {"config", "data", "parallel"},
    "checkpoint": {"models", "data", "config", "launcher"},
    "objectives": {"checkpoint", "models", "data", "config"},
    "inference": {"objectives", "checkpoint", "models", "data", "config"},
    "pretrain": {"objectives", "checkpoint", "planning", "models", "parallel", "data", "config", "launcher"},
    "scaling": {"pretrain", "planning", "checkpoint", "models", "data", "config"},
    "planning": {"objectives", "models", "parallel", "data", "config"},
    "commands": {"pretrain", "planning", "scaling", "inference", "objectives", "checkpoint", "models", "parallel", "data",
                 "config", "launcher"},
}


def _module_name(path: Path) -> list[str]:
    parts = ["gigatron", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(path: Path, here: list[str] | None = None) -> list[str]:
    """Every gigatron module `path` (the module `here`) imports, at top level or inside functions."""
    here = here or _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + (1 if path.name == "__init__.py" else 0)]
                found.append(".".join(base + ([node.module] if node.module else [])))
            else:
                found.append(node.module or "")
    return [name for name in found if name.split(".")[0] == "gigatron"]


def package_imports() -> dict[tuple[str, str], list[str]]:
    """(importing package, imported package) -> the files holding such an import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).parts
        if len(rel) == 1:
            continue  # gigatron/__init__.py and __main__.py
        for name in _imported_modules(path):
            parts = name.split(".")
            if len(parts) > 1 and parts[1] != rel[0]:
                edges[(rel[0], parts[1])].append(str(path.relative_to(ROOT.parent)))
    return edges


def test_every_package_has_a_rule() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED), "add the new package to ALLOWED (and docs/architecture.md)"


def test_packages_import_only_what_their_layer_allows() -> None:
    bad = [f"{a} -> {b} ({', '.join(sorted(set(files)))})" for (a, b), files in package_imports().items()
           if b not in ALLOWED[a]]
    assert not bad, "imports against docs/architecture.md:\n" + "\n".join(bad)


def test_no_two_packages_import_each_other() -> None:
    edges = package_imports()
    cycles = {frozenset({a, b}) for a, b in edges if (b, a) in edges}
    assert not cycles, f"import cycles between packages: {sorted(sorted(c) for c in cycles)}"


def test_the_rules_see_a_forbidden_import(tmp_path: Path) -> None:
    # The checker itself: an import inside a function counts, and a relative one resolves.
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from gigatron.pretrain.loop import Trainer\n")
    assert _imported_modules(source, ["gigatron", "data", "probe"]) == ["gigatron.pretrain.loop"]
    source.write_text("from ..pretrain import loop\n")
    assert _imported_modules(source, ["gigatron", "data", "probe"]) == ["gigatron.pretrain"]


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"], ["convert", "reshard", "--help"],
                                  ["scaling", "predict", "--help"], ["data", "--help"], ["sweep", "plan", "--help"]])
def test_help_does_not_import_torch(argv: list[str]) -> None:
    probe = ("import sys, runpy\n"
             f"sys.argv = ['gigatron', *{argv!r}]\n"
             "try:\n    runpy.run_module('gigatron', run_name='__main__')\n"
             "except SystemExit as exc:\n    code = exc.code\n"
             "heavy = sorted(m for m in ('torch', 'deepspeed', 'megatron', 'transformers') if m in sys.modules)\n"
             "print('HEAVY', heavy, 'CODE', code)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=ROOT.parent).stdout
    assert "HEAVY [] CODE 0" in out, out[-2000:]


def test_every_command_module_is_importable_without_torch() -> None:
    probe = ("import sys\nfrom gigatron.commands import COMMANDS, build_parser\nbuild_parser()\n"
             "print('TORCH', 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=ROOT.parent)
    assert "TORCH False" in out.stdout, out.stdout + out.stderr


def test_the_trainer_names_no_family_and_no_feature() -> None:
    # Families come from the registry and features through objectives.build_features; the loop
    # only calls their hooks. (Words in identifiers, strings and comments alike.)
    from gigatron.models.registry import model_families

    words = {*model_families(), "matformer", "granularit", "grow", "tokenformer", "pattention", "mamba", "diffusion",
             "rectified", "flow", "image", "caption"}
    text = (ROOT / "pretrain" / "loop.py").read_text().lower()
    named = sorted(w for w in words if re.search(rf"(?<![a-z]){re.escape(w)}", text))
    assert not named, f"gigatron/pretrain/loop.py names {named}"


def test_only_the_layout_reads_megatron_global_parallel_state() -> None:
    # One owner of the layout (gigatron/parallel/): everything else receives a ParallelLayout.
    readers = sorted(str(path.relative_to(ROOT.parent)) for path in ROOT.rglob("*.py")
                     if path.parent.name != "parallel" and "parallel_state" in path.read_text())
    assert not readers, f"read megatron-core's parallel_state outside gigatron/parallel/: {readers}"
