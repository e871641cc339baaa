"""NIXL's progress thread without the busy spin, for our own agents and for the agents vLLM makes.

NIXL's Python API hard-codes the progress thread's delay to 0 (``nixl_agent.__init__`` sets
``nixlAgentConfig.pthrDelay = 0``), which makes the thread busy-spin: a whole core per idle process (measured
here: 99.9 % of a core with no transfer in flight; two vLLM NixlConnector pods took both cores of the node
and starved every other process, the decode's sidecar included). With a delay the thread waits on UCX's
event file descriptor between polls: 3 % of a core idle, transfers unaffected (``bench_transfer``).

Standard library only, imported at interpreter start in the vLLM image (``images/worker-vllm``'s ``.pth``
file calls ``install_from_environment``): vLLM's processes, spawned ones included, create their agents
after it has run.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Microseconds, as NIXL's nixlAgentConfig.pthrDelay.
PROGRESS_THREAD_DELAY_US = 1000
ENV_DELAY = "TRIPTYCH_NIXL_PROGRESS_DELAY_US"
_lock = threading.Lock()


def _with_delay(create: Callable[[str, Any], Any], delay_us: int) -> Callable[[str, Any], Any]:
    def create_with_delay(name: str, config: Any) -> Any:
        config.pthrDelay = delay_us
        return create(name, config)

    return create_with_delay


@contextmanager
def progress_thread_delay(api: Any, delay_us: int = PROGRESS_THREAD_DELAY_US) -> Iterator[None]:
    """Agents created inside this block get ``delay_us``: wrapping ``nixlBind.nixlAgent`` for the duration
    of the call is the only way to change the value without re-implementing the agent's set-up. The lock
    keeps concurrent creations from seeing each other's wrapper."""
    bind = api.nixlBind
    with _lock:
        real = bind.nixlAgent
        bind.nixlAgent = _with_delay(real, delay_us)
        try:
            yield
        finally:
            bind.nixlAgent = real


def install(api: Any, delay_us: int) -> None:
    """Every agent this process creates from now on gets ``delay_us`` (idempotent)."""
    bind = api.nixlBind
    with _lock:
        if not getattr(bind.nixlAgent, "_triptych_delay", False):
            wrapped = _with_delay(bind.nixlAgent, delay_us)
            wrapped._triptych_delay = True  # type: ignore[attr-defined]
            bind.nixlAgent = wrapped


def install_from_environment() -> None:
    """``install`` when ``TRIPTYCH_NIXL_PROGRESS_DELAY_US`` is set (the operator sets it in vLLM engine
    containers) and NIXL is importable; nothing otherwise, so other processes of the image pay nothing."""
    value = os.environ.get(ENV_DELAY)
    if not value:
        return
    try:
        api = importlib.import_module("nixl._api")
    except ImportError:
        return
    install(api, int(value))
