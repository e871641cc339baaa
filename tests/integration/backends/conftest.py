"""The backends' venvs (`hack/backend-venv sglang|vllm`), whose pythons run the checkers in
``tests/backends``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HACK


def backend_python(backend: str) -> Path:
    """A backend venv's python; fails (naming the command that makes it) where there is none."""
    out = subprocess.run(
        [str(HACK / "backend-venv"), backend, "--path"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    python = Path(out.stdout.strip())
    if not python.exists():
        pytest.fail(
            f"no {backend} venv at {python.parent.parent}: run `hack/backend-venv {backend}` first",
            pytrace=False,
        )
    return python


@pytest.fixture(scope="session")
def sglang_python() -> Path:
    return backend_python("sglang")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    return backend_python("vllm")


def run_checker(
    python: Path,
    checker: Path,
    request: dict[str, Any],
    *,
    version: tuple[str, str] = ("sglang", "0.5.23"),
    timeout_s: float = 600,
    python_path: Path | None = None,
) -> dict[str, Any]:
    """One run of a checker script under ``python``: ``request`` as JSON on stdin, its JSON answer back,
    which names the backend's version (``version``: the key and the value it must have). ``python_path``:
    a folder put on the checker's PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": str(python_path)} if python_path is not None else None
    run = subprocess.run(
        [str(python), str(checker)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    answer: dict[str, Any] = json.loads(run.stdout)
    assert answer[version[0]] == version[1]
    return answer
