"""``python -m triptych_workers.engines.builtin.prepare --model NAME --out DIR``: write a builtin model.

Run by a vLLM pod's init container for ``model.source.builtin`` (every name but the reference's
``tiny-qwen2-vl``, which ``engines.reference.prepare`` writes); prints the directory it prepared. A second
run is a no-op.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from triptych_workers.engines.builtin.catalog import BUILTINS, REFERENCE
from triptych_workers.engines.builtin.writer import digest, write_builtin
from triptych_workers.engines.errors import ModelDirError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, choices=sorted(set(BUILTINS) - {REFERENCE}))
    parser.add_argument("--out", type=Path, required=True, help="the model directory to write")
    args = parser.parse_args(argv)
    existed = args.out.exists()
    start = time.monotonic()
    try:
        path = write_builtin(args.model, args.out)
    except ModelDirError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 1
    verb = "reused" if existed else f"written in {time.monotonic() - start:.1f} s"
    print(f"prepare: {args.model} {digest(args.model)} {verb}: {path}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
