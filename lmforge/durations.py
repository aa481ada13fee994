"""Durations as people write them ('90s', '10m', '1h30m') and as the tools print them."""

from __future__ import annotations

import math
import re

from lmforge.errors import ConfigError

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """'90', '90s', '2m', '1h30m', '1.5h' -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        try:
            seconds = float(s)
        except ValueError:
            parts = re.findall(r"(\d+(?:\.\d+)?)([a-z]+)", s)
            if not parts or "".join(a + b for a, b in parts) != s or any(u not in _UNITS for _, u in parts):
                raise ConfigError(f"cannot read the duration {text!r}; write it like 90s, 10m, 1h30m") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"the duration {text!r} must be a positive, finite time")
    return seconds


def fmt_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"
