"""The SGLang venv (`hack/backend-venv sglang`) whose python runs the checkers in ``tests/backends``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HACK


@pytest.fixture(scope="session")
def sglang_python() -> Path:
    """The SGLang venv's python; fails (naming the command that makes it) where there is none."""
    out = subprocess.run(
        [str(HACK / "backend-venv"), "sglang", "--path"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    python = Path(out.stdout.strip())
    if not python.exists():
        pytest.fail(
            f"no SGLang venv at {python.parent.parent}: run `hack/backend-venv sglang` first", pytrace=False
        )
    return python


def run_checker(python: Path, checker: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One run of a checker script under ``python``: ``request`` as JSON on stdin, its JSON answer back."""
    run = subprocess.run(
        [str(python), str(checker)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    answer: dict[str, Any] = json.loads(run.stdout)
    assert answer["sglang"] == "0.5.23"
    return answer
