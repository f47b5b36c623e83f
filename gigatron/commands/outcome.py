"""How a command reports the end of its work: one line on stderr and an exit code a script can read."""

from __future__ import annotations

import sys
from collections.abc import Callable

from gigatron.launcher.exit_codes import EXIT_CONFIG_ERROR


def run_verified(command: str, work: Callable[[], object], input_errors: tuple[type[Exception], ...]) -> int:
    """Run `work`: 0 when it succeeds, 1 when its self-check fails (VerificationError), 2 for bad input.

    Each failure prints `gigatron <command>: <message>`, the message naming the file, key or value.
    """
    from gigatron.checkpoint.verify import VerificationError

    try:
        work()
    except VerificationError as exc:
        print(f"gigatron {command}: verification failed: {exc}", file=sys.stderr)
        return 1
    except input_errors as exc:
        print(f"gigatron {command}: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    return 0
