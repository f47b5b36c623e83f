"""How the trainer's log lines read: each stamped with the time (logs end up in files, SLURM
output, where nothing else dates them), durations as h:mm:ss."""

from __future__ import annotations

import time


def stamped(text: str) -> str:
    """`text` after the local time, `2026-12-05 01:00:00 text`."""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"


def format_duration(seconds: float) -> str:
    """h:mm:ss (days as `Nd h:mm:ss`)."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text
