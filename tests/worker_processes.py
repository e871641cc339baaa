"""Role processes for real, shared by the process e2e tests and the pipeline benchmark (no pytest here).

``base_config`` is a worker config file's contents for one deployment on a local nats-server; ``start_role``
runs ``python -m triptych_workers.main <role>`` on 127.0.0.1 with free ports and its output in a log file;
``wait_ready`` polls ``/readyz`` with a deadline; ``stop_procs`` sends SIGTERM to each process by its PID and
kills what has not exited after a deadline.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.kube import stop_process
from tests.media_factory import encode_image, gradient_array

MODEL = "triptych-tiny"
PROMPT = "Describe the image."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path
    http_port: int = 0

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def sample_sum(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels`` (0.0 when there is none)."""
        return self.sample_sums([name], **labels)[name]

    def sample_sums(self, names: list[str], **labels: str) -> dict[str, float]:
        """``sample_sum`` of each of ``names``, all from one scrape (so they describe the same moment)."""
        sums = dict.fromkeys(names, 0.0)
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name in sums and labels.items() <= sample.labels.items():
                    sums[sample.name] += sample.value
        return sums

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def base_config(deployment: str, mode: str, model_dir: Path, nats_url: str, **serving: Any) -> dict[str, Any]:
    """A deployment's config on a local nats-server; ``serving`` overrides keys of the ``serving`` block."""
    return {
        "deployment": deployment,
        "namespace": "e2e",
        "backend": "reference",
        "mode": mode,
        "model": {"name": MODEL, "path": str(model_dir)},
        "media": {"allow_private_networks": True},
        "encoderCache": {"capacity": "64Mi", "capacityBytes": 64 << 20},
        "nats": {"url": nats_url},
        "serving": {
            "requestTimeoutSeconds": 20,
            "drainTimeoutSeconds": 5,
            "engineThreads": 1,
            "heartbeatSeconds": 0.5,
            **serving,
        },
        # Embeddings/KV of the tiny model are small: the NIXL threshold is lowered so they take NIXL.
        "dataPlane": {"nixlMinBytes": 4096},
    }


def start_role(
    tmp: Path, name: str, role: str, config: dict[str, Any], env: Mapping[str, str] | None = None
) -> Proc:
    """Write ``config`` (with free ports) under ``tmp`` and start the role process on 127.0.0.1, with
    ``env`` added to this process's environment (what a pod spec's env would set)."""
    metrics_port, http_port = free_port(), free_port()
    config = {**config, "ports": {"http": http_port, "metrics": metrics_port}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "triptych_workers.main",
                role,
                "--config",
                str(path),
                "--host",
                "127.0.0.1",
                "--worker-id",
                name,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        )
    return Proc(name, process, metrics_port, log, http_port)


class Startable(Protocol):
    """What ``wait_ready`` needs of a started process (a role's ``Proc``, a ``VllmServer``)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool: ...


def wait_ready(procs: Sequence[Startable], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        while not proc.ready():
            if proc.process.poll() is not None:
                raise AssertionError(f"{proc.name} exited:\n{proc.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{proc.name} not ready:\n{proc.log.read_text()[-3000:]}")
            time.sleep(0.2)


def stop_procs(procs: list[Proc], timeout_s: float = 30) -> None:
    for proc in procs:
        if proc.process.poll() is None:
            proc.process.send_signal(signal.SIGTERM)
    for proc in procs:  # all were signalled first, so they stop in parallel
        stop_process(proc.process, grace_s=timeout_s)


def png(seed: int, width: int = 64, height: int = 48) -> bytes:
    return encode_image(gradient_array(width, height, seed), "PNG")


def image_content(data: bytes, prompt: str = PROMPT) -> list[dict[str, Any]]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
