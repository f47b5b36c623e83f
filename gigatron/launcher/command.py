"""How gigatron starts its own helper processes (e.g. the ranks `convert reshard` runs)."""

from __future__ import annotations

import os
import shlex
import sys

COMMAND_ENV = "GIGATRON_COMMAND"


def gigatron_command() -> list[str]:
    """The command line that runs `gigatron`: `$GIGATRON_COMMAND` split as a shell would (a wrapper,
    a container entry point, the test suite's preloaded process server), else this interpreter's
    `python -m gigatron`."""
    override = os.environ.get(COMMAND_ENV, "").strip()
    return shlex.split(override) if override else [sys.executable, "-m", "gigatron"]
