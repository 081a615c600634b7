"""Run every benchmark module of this package that has a ``main()`` (``make bench``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def run_all() -> int:
    failures = 0
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        main = getattr(importlib.import_module(f"bench.{module.name}"), "main", None)
        if main is None:
            continue
        print(f"== bench.{module.name}", flush=True)
        failures += int(bool(main([])))
    return failures


if __name__ == "__main__":
    sys.exit(run_all())
