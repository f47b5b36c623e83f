"""The shell examples in README.md and docs/*.md stay true: every `gigatron ...` command line in a
```bash block parses with the command's own parser, every shipped config it names exists, and its
`--set` overrides load onto that config (a training run's warmup fitting its length). The plan and
help examples run for real, and so does every whole block marked `<!-- doc-test: run -->` (the
examples that take a few seconds on a CPU: short training runs, the data pipeline, the launcher),
in a scratch directory that sees the repository's .venv, configs and test data. Blocks of ~20 s
(memory.md's two recompute runs, scaling.md's full-grid Chinchilla fit) are left unmarked: the
suites of their features run the same commands (test_recompute, test_scaling)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from gigatron.commands import COMMANDS, build_parser
from gigatron.config import ConfigError, load_config
from gigatron.planning.throughput import schedule_budget_problems
from tests.conftest import GIGATRON, REPO

RUN_MARKER = "<!-- doc-test: run -->"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAIN_JOB_CONFIG = "configs/hybrid/smoke.yaml"  # scripts/pretrain.sh's default
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def _command_lines() -> list[tuple[str, int, list[str]]]:
    """(doc, line number, argv after `gigatron`) of each gigatron command in the docs' bash blocks, and of
    each scripts/pretrain.sh line as the `pretrain` command it runs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in BLOCK.finditer(text):
            first_line = text[:block.start()].count("\n") + 2
            joined = block.group(1).replace("\\\n", " ")
            for offset, line in enumerate(joined.splitlines()):
                if "[--" in line or "<" in line or "$(" in line or "{" in line:
                    continue  # a synopsis with optional parts or placeholders, not a command
                try:
                    words = shlex.split(line, comments=True)
                except ValueError:
                    continue
                env = {}
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                for i, word in enumerate(words):
                    argv = None
                    if word.endswith("gigatron") and i + 1 < len(words) and words[i + 1] in COMMANDS:
                        argv = words[i + 1:]
                    elif word.endswith("scripts/pretrain.sh"):  # the main job: pretrain on $CONFIG
                        argv = ["pretrain", "--config", env.get("CONFIG", MAIN_JOB_CONFIG), *words[i + 1:]]
                    if argv is not None:
                        for stop in ("|", "&&", ";", ">", "2>"):
                            if stop in argv:
                                argv = argv[:argv.index(stop)]
                        found.append((doc.relative_to(REPO).as_posix(), first_line + offset, argv))
                        break
    return found


COMMAND_LINES = _command_lines()


def test_the_docs_hold_many_examples():
    assert len(COMMAND_LINES) > 60, "the extractor found too few examples"


@pytest.mark.parametrize("doc, line, argv", COMMAND_LINES, ids=[f"{d}:{n}" for d, n, _ in COMMAND_LINES])
def test_each_documented_command_parses_and_its_config_loads(doc, line, argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}:{line}: `gigatron {shlex.join(argv)}` does not parse (exit {exc.code})")
    if argv[0] == "launch":  # its command is another gigatron command line, checked the same way
        rest = args.command[1:] if args.command and args.command[0] == "--" else args.command
        nested = next((i for i, w in enumerate(rest) if w.endswith("gigatron")), None)
        if nested is not None and nested + 1 < len(rest):
            test_each_documented_command_parses_and_its_config_loads(doc, line, rest[nested + 1:])
        return
    config = getattr(args, "config", None)
    if isinstance(config, str) and config.startswith("configs/"):
        path = REPO / config
        assert path.is_file(), f"{doc}:{line}: {config} does not exist"
        try:
            cfg = load_config(path, list(getattr(args, "overrides", []) or []))
        except ConfigError as exc:
            pytest.fail(f"{doc}:{line}: `gigatron {shlex.join(argv)}`: {exc}")
        if argv[0] == "pretrain":  # e.g. a shortened run whose config warms up for longer
            assert not schedule_budget_problems(cfg), f"{doc}:{line}: {schedule_budget_problems(cfg)}"


# `plan --search` of an 8B model plans dozens of layouts (a minute or two): tests/unit/test_plan.py
# searches the smoke model instead.
RUNNABLE = [(d, n, a) for d, n, a in COMMAND_LINES
            if a[0] == "plan" and "--search" not in a and all(not w.startswith("runs/") for w in a)
            or "--help" in a]


@pytest.mark.slow  # each plans a model from shapes (seconds)
@pytest.mark.parametrize("doc, line, argv", RUNNABLE, ids=[f"{d}:{n}" for d, n, _ in RUNNABLE])
def test_the_quick_examples_run(doc, line, argv):
    proc = subprocess.run([*GIGATRON, *argv], capture_output=True, text=True, timeout=600, cwd=REPO)
    # `plan` exits 3 when a layout does not fit: the docs show such examples on purpose.
    assert proc.returncode in (0, 3), f"{doc}:{line}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr


def _marked_blocks() -> list[tuple[str, int, str]]:
    """(doc, line number, script) of each bash block right after a RUN_MARKER line."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in BLOCK.finditer(text):
            if text[:block.start()].rstrip().endswith(RUN_MARKER):
                found.append((doc.relative_to(REPO).as_posix(), text[:block.start()].count("\n") + 2, block.group(1)))
    return found


MARKED = _marked_blocks()


def test_the_docs_mark_their_quick_examples():
    assert len(MARKED) >= 4, f"only {len(MARKED)} blocks are marked {RUN_MARKER}"


@pytest.mark.slow  # short training runs and fits: seconds each
@pytest.mark.parametrize("doc, line, script", MARKED, ids=[f"{d}:{n}" for d, n, _ in MARKED])
def test_the_marked_examples_run(doc, line, script, tmp_path):
    # Relative paths in the docs (.venv/bin/gigatron, configs/, runs/, fits/) resolve as in a checkout,
    # while what the example writes stays in tmp_path, its /tmp/ paths included; bare `gigatron` and
    # `python` are the venv's.
    for name in (".venv", "configs", "tests", "scripts", "slurm"):
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "tmp").mkdir()
    script = script.replace("/tmp/", f"{tmp_path}/tmp/")
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, f"{doc}:{line}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{doc}:{line}:\n{proc.stderr[-3000:]}"
