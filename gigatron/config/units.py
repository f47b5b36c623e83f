"""Sizes written the way people write them in configs and on command lines."""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_byte_size(text: str | int, key: str) -> int:
    """Bytes of "200GB", "1.5TiB", "4096" or 4096 (decimal and binary units); ValueError naming `key`."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"{key}={text!r} is not a size; write bytes or a number with a unit "
                             f"({', '.join(u for u in _UNITS if u)}), e.g. 200GB")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _UNITS[unit])
    if size < 1:
        raise ValueError(f"{key}={text!r} must be at least 1 byte")
    return size
