"""Leaf helpers for measurements, shared by every part (imports nothing of the project)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, q in [0, 100] (linear interpolation, as numpy's default), or None for no
    values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q is a percentage in [0, 100], got {q!r}")
    if len(values) == 0:
        return None
    data = sorted(float(v) for v in values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
