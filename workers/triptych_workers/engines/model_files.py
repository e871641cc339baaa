"""Writing a model directory once, so that readers never see half of one (torch-free): the builtin models'
writers (``engines.builtin``, ``engines.reference.model_dir``) go through ``write_once``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def write_once(target: Path, write: Callable[[Path], None], check: Callable[[Path], None]) -> Path:
    """Ensures ``target`` holds a complete model; returns it. ``write(dir)`` fills an empty directory;
    ``check(dir)`` raises unless a directory already holds the model wanted.

    An existing ``target`` is only checked (not even its mtime changes). Otherwise the files go into a
    temporary sibling directory renamed into place, so readers never see half a model, and two racing
    writers leave one complete copy (the loser checks the winner's).
    """
    if target.exists():
        check(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.exists():
                raise
            check(target)  # another writer won the race with the same content
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
