"""Figures measured by the reliability tests (latencies, counts), kept for the report.

Tests never assert on timings; they record them here. Each call appends one JSON line to
``$DPLOYR_RELIABILITY_FIGURES`` (default ``.reliability/figures.jsonl`` in the working
directory) and prints it, so ``pytest -s`` shows it too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["percentile", "record"]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by rank (nearest rank, no interpolation)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def record(test: str, **figures: Any) -> None:
    """Append ``figures`` of ``test`` to the figures file and print them."""
    path = Path(os.environ.get("DPLOYR_RELIABILITY_FIGURES", ".reliability/figures.jsonl"))
    line = json.dumps({"test": test, "at": time.time(), **figures}, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(line + "\n")
    print(line)
