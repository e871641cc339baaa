"""``python -m triptych_workers.engines.reference.prepare --out DIR``: write the reference model once.

Run by the reference backend's init container; prints the directory it prepared. A second run is a no-op.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from triptych_workers.engines.errors import ModelDirError
from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="model directory (default: $TRIPTYCH_MODEL_CACHE/reference-<digest>)",
    )
    args = parser.parse_args(argv)
    spec = ReferenceSpec()
    target = args.out if args.out is not None else default_model_dir(spec)
    existed = target.exists()
    start = time.monotonic()
    try:
        path = prepare_model(target, spec)
    except ModelDirError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 1
    verb = "reused" if existed else f"written in {time.monotonic() - start:.1f} s"
    print(f"prepare: reference model {spec.digest()} {verb}: {path}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
