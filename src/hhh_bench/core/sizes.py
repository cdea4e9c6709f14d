"""Sizes in bytes from what a config says (``merge_engine.max_shard_size``: ``"2GB"``, ``"2 GiB"``,
a number of bytes): read by the config schema, which checks the value, and by the merge engine,
which shards by it."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(size: str | int) -> int:
    """Bytes of a shard-size: an int, or a string like ``"2GB"``, ``"2 GiB"``, ``"500MB"``,
    ``"1.5G"`` (KB/MB/GB/TB decimal as in ``transformers``; KiB/MiB/GiB/TiB binary)."""
    if isinstance(size, bool):
        raise ValueError(
            f"max_shard_size must be a size like '2GB' or a number of bytes, got {size!r}"
        )
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = _SIZE.match(str(size))
    if not m:
        raise ValueError(
            f"max_shard_size {size!r} is not a size: use a number of bytes or a string such as "
            "'2GB', '2 GiB', '500MB'"
        )
    unit = m.group(2).upper()
    binary = "I" in unit
    letter = unit.replace("I", "").replace("B", "")
    mult = (1 << (10 * "KMGT".index(letter) + 10)) if binary and letter else _UNITS[letter]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value
