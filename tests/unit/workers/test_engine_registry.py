"""The engine registry: a backend with an entry resolves to its engine and its torch-free prompter; one
without an entry is refused with a ``ConfigError`` that names it and the backends that have one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from triptych_workers.config import ConfigError, WorkerConfig
from triptych_workers.engines.registry import lookup_backend


def _raw_config(backend: str, model_dir: Path) -> dict[str, Any]:
    return {
        "deployment": "test",
        "namespace": "default",
        "backend": backend,
        "model": {"name": "triptych-tiny", "path": str(model_dir)},
    }


@pytest.fixture(scope="module")
def model_dir() -> Path:
    pytest.importorskip("torch")
    from triptych_workers.engines.reference.model_dir import prepare_model
    from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

    return prepare_model(default_model_dir(ReferenceSpec()))


@pytest.mark.parametrize("backend", ["sglang", "trtllm"])
def test_a_backend_without_an_entry_is_a_config_error_naming_it_and_the_known_ones(backend: str) -> None:
    config = WorkerConfig.model_validate(_raw_config(backend, Path("/models")))
    with pytest.raises(ConfigError) as refused:
        lookup_backend(config.backend)
    assert str(refused.value) == (
        f"backend {backend!r} has no engine in this worker runtime (backends with one: reference, vllm)"
    )


async def test_the_reference_backend_loads_its_engine(model_dir: Path) -> None:
    from triptych_workers.engines.reference.engine import ReferenceEngine

    config = WorkerConfig.model_validate(_raw_config("reference", model_dir))
    engine = await lookup_backend(config.backend).load_engine(config)
    try:
        assert isinstance(engine, ReferenceEngine)
        assert engine.info.max_model_len > 0
    finally:
        await engine.aclose()


def test_the_reference_backend_builds_its_prompter_without_importing_torch(model_dir: Path) -> None:
    """In a fresh interpreter, as the frontend process does: the registry and the prompter load, torch not."""
    code = (
        "import sys\n"
        "from triptych_workers.config import WorkerConfig\n"
        "from triptych_workers.engines.registry import lookup_backend\n"
        f"config = WorkerConfig.model_validate({_raw_config('reference', model_dir)!r})\n"
        "prompter = lookup_backend(config.backend).load_prompter(config)\n"
        "assert type(prompter).__name__ == 'ReferencePrompter', type(prompter)\n"
        "assert prompter.render_text('Hello').token_ids, 'the prompter rendered nothing'\n"
        "assert 'torch' not in sys.modules, 'building the prompter imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
