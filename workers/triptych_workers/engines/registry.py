"""The backends this worker runtime can run, by name: the one place a backend is wired in.

An entry says how a worker process loads the backend's ``Engine`` and how the frontend builds its
``Prompter``, both from the worker config alone. ``main`` and the frontend look the configured backend up
here and never name one; adding a backend means adding its engine package and one entry below.

Each loader imports its backend's modules only when it is called: a worker image carries only its own
backend's packages, and importing the frontend never loads torch (only a worker process calls
``load_engine``). The reference backend's prompter is torch-free; vLLM's renders with the model's own
processor (``engines.renderer``), so a vLLM frontend loads transformers and torch when it starts, in its
own process: the price of rendering exactly as the model (and vLLM) does. Import-linter cannot tell a
deferred import from one at the top, so the frontend contract in ``.importlinter`` ignores the loaders'
imports (one line each), and tests check real processes instead (``test_frontend_imports_no_torch``,
``test_engine_registry``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from triptych_contract import Backend

from triptych_workers.config import ConfigError, WorkerConfig
from triptych_workers.engines.base import Engine, Prompter
from triptych_workers.engines.errors import ModelDirError


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """How one backend comes up in a worker process."""

    load_engine: Callable[[WorkerConfig], Awaitable[Engine]]
    """The in-process engine of an encode, prefill, decode or aggregated worker (may import torch)."""
    load_prompter: Callable[[WorkerConfig], Prompter]
    """The frontend's prompt renderer (the reference's is torch-free; one that runs the model's own
    processor imports transformers, and with it torch, in the frontend's process)."""


async def _load_reference_engine(config: WorkerConfig) -> Engine:
    from triptych_workers.engines.reference.engine import ReferenceEngine  # noqa: PLC0415 - imports torch

    return await ReferenceEngine.load(Path(config.model.path), num_threads=config.serving.engine_threads)


def _load_reference_prompter(config: WorkerConfig) -> Prompter:
    from triptych_workers.engines.reference.prompt import ReferencePrompter  # noqa: PLC0415 - module docstring

    try:
        return ReferencePrompter(Path(config.model.path))
    except ModelDirError as exc:
        raise ConfigError(str(exc)) from exc


def _load_processor_prompter(config: WorkerConfig) -> Prompter:
    """The model's own processor renders (``engines.renderer``); a model it cannot render for is refused
    here, at startup, as a configuration error naming the architecture."""
    from triptych_workers.engines.renderer import ProcessorRenderer  # noqa: PLC0415 - imports transformers

    try:
        return ProcessorRenderer(config.model.path, config.modalities)
    except ModelDirError as exc:
        raise ConfigError(str(exc)) from exc


ENGINE_STARTUP_TIMEOUT_S = 1800.0


async def _load_vllm_engine(config: WorkerConfig) -> Engine:
    from triptych_workers.engines.vllm.engine import VllmEngine  # noqa: PLC0415 - module docstring

    if config.engine is None:
        raise ConfigError("a vllm worker needs the engine server's address (config key 'engine')")
    stages = set(config.stages or ())
    return await VllmEngine.connect(
        config.engine.url,
        health_path=config.engine.health_path,
        # An encode pod's vLLM is encoder-only: it is sent each item; elsewhere vLLM encodes while prefilling.
        encoder_only=config.role == "encode" or stages == {"encode"},
        modalities=config.modalities,
        # As long as the engine container's own startup probe allows it to load (the operator gives it 30
        # minutes): until then the sidecar is live but not ready.
        startup_timeout_s=max(config.serving.startup_timeout_seconds, ENGINE_STARTUP_TIMEOUT_S),
        request_timeout_s=config.serving.request_timeout_seconds,
        max_streams=config.serving.concurrency,
    )


_BACKENDS: Mapping[Backend, BackendEntry] = {
    "reference": BackendEntry(load_engine=_load_reference_engine, load_prompter=_load_reference_prompter),
    # vLLM's frontend renders with the model's own chat template and processor, as vLLM does; the sidecar
    # checks vLLM's expansion against it on every request.
    "vllm": BackendEntry(load_engine=_load_vllm_engine, load_prompter=_load_processor_prompter),
}


def lookup_backend(name: Backend) -> BackendEntry:
    """The entry for ``name``; ``ConfigError`` (the process exits with it) for a backend without one."""
    try:
        return _BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise ConfigError(
            f"backend {name!r} has no engine in this worker runtime (backends with one: {known})"
        ) from None
