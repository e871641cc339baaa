"""Run the benchmarks: every ``tests/bench/bench_*.py`` module's ``main()``, or only those named.

``python -m tests.bench`` / ``make bench`` runs all; ``python -m tests.bench media`` runs ``bench_media``.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform
import sys
import time

import tests.bench


def machine() -> str:
    """CPU model and cores, printed once so figures can be compared across machines."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {os.cpu_count()} cores ({usable} usable); Python {platform.python_version()}"


def main(argv: list[str]) -> int:
    modules = pkgutil.iter_modules(tests.bench.__path__)
    available = sorted(m.name for m in modules if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else f"bench_{n}" for n in argv] or available
    unknown = [n for n in wanted if n not in available]
    if unknown:
        listing = f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available)}"
        print(listing, file=sys.stderr)
        return 2
    print(f"machine: {machine()}", flush=True)
    for name in wanted:
        module = importlib.import_module(f"tests.bench.{name}")
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"--- {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
