"""vLLM servers as host processes (vLLM's CPU build from ``hack/backend-venv vllm``) with the flags the
operator's vllm profile writes for each role on CPU, for the vLLM benchmark (no pytest here).

Each server is ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1 with its output in a log
file; ``stop`` ends it by its PID (SIGTERM, then SIGKILL after a deadline), which takes its engine-core
child with it.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from triptych_workers import nixl_progress

from tests.kube import stop_process
from tests.worker_processes import free_port

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 600.0  # for wait_ready: a vLLM server loads and compiles for tens of seconds


def vllm_python() -> Path | None:
    """The vLLM venv's python, if ``hack/backend-venv vllm`` has made it."""
    out = subprocess.run(
        [str(REPO / "hack" / "backend-venv"), "vllm", "--path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(out)
    return path if path.exists() and any(path.parent.parent.glob(".complete-*")) else None


def role_args(role: str, ec_dir: Path) -> list[str]:
    """vLLM's own disaggregation flags for one role, as the operator writes them on CPU."""
    ec = {
        "ec_connector": "ECExampleConnector",
        "ec_connector_extra_config": {"shared_storage_path": str(ec_dir)},
    }
    kv = {"kv_connector": "NixlConnector", "kv_buffer_device": "cpu"}
    if role == "encode":
        producer = json.dumps({**ec, "ec_role": "ec_producer"})
        return [
            "--mm-encoder-only",
            "--ec-transfer-config",
            producer,
            "--enforce-eager",
            "--no-enable-prefix-caching",
        ]
    if role == "prefill":
        return [
            "--ec-transfer-config", json.dumps({**ec, "ec_role": "ec_consumer"}),
            "--kv-transfer-config", json.dumps({**kv, "kv_role": "kv_producer"}),
        ]  # fmt: skip
    if role == "decode":
        return ["--kv-transfer-config", json.dumps({**kv, "kv_role": "kv_consumer"})]
    if role == "pd":  # E/PD: it prefills and decodes, the encoder output from the encode role's files
        return ["--ec-transfer-config", json.dumps({**ec, "ec_role": "ec_consumer"})]
    return []  # plain (and EPD, where the one vLLM does it all)


@dataclass
class VllmServer:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        stop_process(self.process, grace_s=30)


def _progress_hook(tmp: Path) -> Path:
    """A directory whose ``sitecustomize`` installs the NIXL progress-thread delay at interpreter start in
    every vLLM process (the venv has no triptych_workers of its own: the repo's is put on its path)."""
    hook = tmp / "nixl-progress-hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import triptych_workers.nixl_progress\ntriptych_workers.nixl_progress.install_from_environment()\n"
    )
    return hook


def start_vllm(
    python: Path,
    tmp: Path,
    role: str,
    model_dir: Path,
    *,
    served: str,
    extra_args: Sequence[str] = (),
    omp_threads: int | None = None,
) -> VllmServer:
    """One server for ``role`` (encode, prefill, decode, pd, or plain) with ``extra_args`` added to its
    command line, its log ``tmp/<role>.log``; ``omp_threads``: its engine's OpenMP (torch) threads, else
    torch's default (one per core of the machine)."""
    name = role
    port = free_port()
    nixl_port = free_port()
    args = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    args += ["--served-model-name", served, "--host", "127.0.0.1", "--port", str(port), "--enable-scale-out"]
    args += role_args(role, tmp / "ec")
    args += extra_args
    env = {
        **os.environ,
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_HOST": "127.0.0.1",
        "VLLM_NIXL_SIDE_CHANNEL_PORT": str(nixl_port),
        "UCX_TLS": "tcp,self,sm",
        "UCX_NET_DEVICES": "lo",
        "HF_HUB_OFFLINE": "1",
    }
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    if role in ("prefill", "decode"):
        # As in the vLLM image (images/worker-vllm's .pth line) and the operator's CPU kv roles: NIXL's
        # progress thread waits between polls instead of spinning a core per engine.
        env[nixl_progress.ENV_DELAY] = str(nixl_progress.PROGRESS_THREAD_DELAY_US)
        env["PYTHONPATH"] = os.pathsep.join([str(_progress_hook(tmp)), str(REPO / "workers")])
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    return VllmServer(name, process, f"http://127.0.0.1:{port}", log)
