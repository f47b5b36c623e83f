"""`gigatron <command>`: the command line. One module per command: argument parsing, printing, exit codes.

No command module imports torch, DeepSpeed, megatron-core or transformers at its top, so `gigatron
--help` and `gigatron <command> --help` answer without them; the libraries a command calls are
imported inside its `run`. A test holds this (tests/unit/test_package_shape.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# command -> (module, help). Each module exposes `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("gigatron.commands.pretrain", "train a registered model from a YAML config"),
    "launch": ("gigatron.commands.launch", "run N local ranks of a command (laptops, tests)"),
    "generate": ("gigatron.commands.generate", "sample text from a trained checkpoint"),
    "sample": ("gigatron.commands.sample", "draw images from a trained diffusion checkpoint"),
    "align": ("gigatron.commands.align", "text-image alignment of a text-to-image checkpoint (shapes)"),
    "convert": ("gigatron.commands.convert", "move a checkpoint between layouts: consolidate, reshard"),
    "export-hf": ("gigatron.commands.export_hf", "write a checkpoint as a Hugging Face transformers model"),
    "grow": ("gigatron.commands.grow", "grow a TokenFormer checkpoint by appending parameter tokens"),
    "matformer": ("gigatron.commands.matformer", "MatFormer submodels: extract (Mix'n'Match), eval"),
    "import-hf": ("gigatron.commands.import_hf", "read a local transformers model as a gigatron checkpoint"),
    "scaling": ("gigatron.commands.scaling", "fit, check and use scaling laws: fit, predict"),
    "plan": ("gigatron.commands.plan", "memory per rank, step time and time to budget of a config, from shapes"),
    "status": ("gigatron.commands.status", "summarise a run directory: progress, loss, speed, restarts"),
    "sweep": ("gigatron.commands.sweep", "plan a grid of runs as a SLURM job array, and summarise it"),
    "data": ("gigatron.commands.data", "data tools: tokenizer, shard, shard-images, default, inspect"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="gigatron", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(command_parser)
    return parser


# Third-party messages every run printed that say nothing a user can act on: megatron-core's notes
# that it runs without Transformer Engine/Apex (it falls back to PyTorch, which is what gigatron
# uses), and deprecations inside DeepSpeed's calls to torch.distributed. Everything else still shows.
_QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, r"Transformer Engine and Apex are not installed"),
    (FutureWarning, r"`torch\.distributed\.\w+` is deprecated"),
)


def quiet_third_party_noise() -> None:
    """Filter the warnings above, and let DeepSpeed use the CPU without a warning when there is
    no GPU (it warns while guessing the accelerator)."""
    import warnings

    for category, message in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if os.environ.get("GIGATRON_DEVICE") == "cpu" or not _cuda_visible():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _cuda_visible() -> bool:
    # Without importing torch (slow): a GPU node has /dev/nvidia0 unless CUDA_VISIBLE_DEVICES hides it.
    return os.path.exists("/dev/nvidia0") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") != ""


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen command; returns its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    quiet_third_party_noise()
    # Only import the chosen command's module when we can tell which it is: keeps `--help` cheap
    # for everything else and keeps the launcher light.
    try:
        if argv and argv[0] in COMMANDS:
            module_name, help_text = COMMANDS[argv[0]]
            parser = argparse.ArgumentParser(prog=f"gigatron {argv[0]}", description=help_text)
            module = importlib.import_module(module_name)
            module.add_arguments(parser)
            return int(module.run(parser.parse_args(argv[1:])) or 0)
        args = build_parser().parse_args(argv)
        return int(importlib.import_module(args._module).run(args) or 0)
    except BrokenPipeError:
        # The reader closed the pipe (`gigatron data inspect ... | head`): stop quietly with the
        # code a C tool killed by SIGPIPE gets; stdout goes to /dev/null so the interpreter's own
        # flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
