"""``python -m bench``: run every benchmark module in this package (each has a ``main()``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main() -> int:
    failed = 0
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        if not hasattr(module, "main"):
            continue
        print(f"## bench.{info.name}", flush=True)
        failed += int(bool(module.main([])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
