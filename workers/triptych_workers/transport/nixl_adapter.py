"""The one typed door to NIXL (which ships no type information).

Only this module touches ``nixl`` (with ``nixl_progress``, which also serves vLLM's agents); it is imported
lazily so a process without NIXL still runs (inline data plane). Every call here is a short synchronous C
call and is made from the event loop's thread: the agent runs its own UCX progress thread (needed, because a
passive producer is never polled by anyone else), and keeping our calls on one thread means the agent's
default thread-sync mode (none) is safe.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

from triptych_workers.nixl_progress import progress_thread_delay
from triptych_workers.transport.errors import NixlUnavailable, TransferFailed

XferState = Literal["DONE", "PROC", "ERR"]


def nixl_importable() -> bool:
    try:
        importlib.import_module("nixl._api")
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Registration:
    """An opaque registration handle (NIXL's ``nixlRegDList``) with what it covers."""

    handle: Any
    address: int
    length: int


@dataclass(frozen=True)
class XferHandle:
    handle: Any


class NixlAgent:
    """A NIXL agent with the UCX backend, DRAM memory only (GPU memory is the same calls with ``VRAM``)."""

    def __init__(self, name: str) -> None:
        try:
            api: Any = importlib.import_module("nixl._api")
        except ImportError as exc:
            raise NixlUnavailable(f"nixl is not installed: {exc}") from exc
        try:
            config = api.nixl_agent_config(enable_prog_thread=True, backends=["UCX"])
            with progress_thread_delay(api):  # not NIXL's busy spin: nixl_progress.py
                self._agent: Any = api.nixl_agent(name, config)
        except Exception as exc:  # NIXL raises RuntimeError/nixlBind errors for any setup failure
            raise NixlUnavailable(f"cannot create a NIXL agent: {exc}") from exc
        if "UCX" not in self._agent.backends:
            raise NixlUnavailable("NIXL has no UCX backend in this environment")
        self.name = name

    def metadata(self) -> bytes:
        return bytes(self._agent.get_agent_metadata())

    def add_remote(self, metadata: bytes) -> str:
        try:
            name = self._agent.add_remote_agent(metadata)
        except Exception as exc:
            raise TransferFailed(f"cannot load a peer's NIXL metadata: {exc}") from exc
        return name.decode() if isinstance(name, bytes) else str(name)  # NIXL returns the name as bytes

    def remove_remote(self, name: str) -> None:
        self._agent.remove_remote_agent(name)

    def register(self, address: int, length: int) -> Registration:
        handle = self._agent.register_memory([(address, length, 0, "")], "DRAM")
        return Registration(handle=handle, address=address, length=length)

    def deregister(self, registration: Registration) -> None:
        self._agent.deregister_memory(registration.handle)

    def start_read(
        self, *, local_address: int, remote_address: int, length: int, remote_device: int, remote_agent: str
    ) -> tuple[XferHandle, XferState]:
        """Post a READ of ``length`` bytes from the peer's ``remote_address`` into ``local_address``."""
        try:
            local = self._agent.get_xfer_descs([(local_address, length, 0)], "DRAM")
            remote = self._agent.get_xfer_descs([(remote_address, length, remote_device)], "DRAM")
            handle = self._agent.initialize_xfer("READ", local, remote, remote_agent)
            state = self._agent.transfer(handle)
        except Exception as exc:
            raise TransferFailed(f"cannot start a NIXL READ from {remote_agent}: {exc}") from exc
        return XferHandle(handle), _state(state)

    def state(self, xfer: XferHandle) -> XferState:
        return _state(self._agent.check_xfer_state(xfer.handle))

    def release(self, xfer: XferHandle) -> None:
        self._agent.release_xfer_handle(xfer.handle)


def _state(value: object) -> XferState:
    if value == "DONE":
        return "DONE"
    if value == "PROC":
        return "PROC"
    return "ERR"
