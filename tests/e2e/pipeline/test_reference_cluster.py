"""The reference pipeline in the cluster: the operator (installed by the chart, with the cluster's NATS) turns
the reference examples into pods on the real node, and the official ``openai`` client talks to the frontend
Service through ``kubectl port-forward``.

One test per mode, run one after another (each deletes its deployment and waits for its pods to go before
the next starts: the real node has 2 cores): EPD (examples/reference-aggregated.yaml), E/PD with http media
from an in-cluster media Service (examples/reference-epd-http-media.yaml) and E/P/D
(examples/reference-epd.yaml, with two encode replicas so one can be deleted mid-traffic). Each proves: Ready
with every pod on the real node, ``kubectl get mmdeploy`` shows every role ready, the greedy answers equal one
in-process reference engine's, and every role's metrics are scrapeable from its pod and move with traffic.
Every wait has a deadline; nothing connects to a kwok pod.
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

pytest.importorskip("torch")

from triptych_workers.engines.reference.model_dir import prepare_model
from triptych_workers.engines.reference.spec import ReferenceSpec, default_model_dir

from tests.e2e.conftest import build_images
from tests.kube import Kube, stop_process, wait_for
from tests.media_factory import encode_image, gradient_array
from tests.reference_answers import Answer, greedy_answers, streamed_answer

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
REAL_NODE = "triptych-real"
MODEL = "triptych/tiny-qwen2-vl"
PROMPT = "Describe the image."
TEXT = "Hello, world! How are you today?"
MAX_TOKENS = 12
ROLES_BY_MODE = {
    "EPD": ["frontend", "decode"],
    "E/PD": ["frontend", "encode", "decode"],
    "E/P/D": ["frontend", "encode", "prefill", "decode"],
}


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def kube(operator: Kube) -> Kube:
    """The operator installed, and the images the reference pods and the media server run."""
    build_images("worker-reference", "echo")
    return operator


def _png(seed: int) -> bytes:
    return encode_image(gradient_array(64, 48, seed), "PNG")


def _image_content(url: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def expected() -> dict[str, Answer]:
    """With the weights the pods' init containers write (the same fixed-seed spec)."""
    png = _png(7)
    return greedy_answers(
        prepare_model(default_model_dir(ReferenceSpec())),
        {"text": (TEXT, []), "image": (_image_content(_data_url(png)), [png])},
        max_tokens=MAX_TOKENS,
    )


# ------------------------------------------------------------------------------------------------ helpers


def _example(file: str, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((EXAMPLES / file).read_text())
    obj["metadata"]["namespace"] = namespace
    return obj


def _pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.items("pods", namespace, f"triptych.dev/deployment={name}")
        if not p["metadata"].get("deletionTimestamp")
    ]


def _diagnostics(kube: Kube, namespace: str) -> str:
    pods = kube.run("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout
    events = kube.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout
    return f"pods:\n{pods}\nevents (last 30):\n" + "\n".join(events.splitlines()[-30:])


@contextmanager
def deployed(kube: Kube, obj: dict[str, Any], timeout: int = 300) -> Iterator[str]:
    """Apply `obj`, wait until it is Ready; afterwards delete it and wait until its pods are gone."""
    name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
    kube.apply(obj)
    try:
        wait = kube.run(
            "wait", "--for=condition=Ready", f"mmdeploy/{name}", "-n", namespace, f"--timeout={timeout}s",
            check=False, timeout=timeout + 15,
        )  # fmt: skip
        assert wait.returncode == 0, f"{name} not Ready: {wait.stderr}\n{_diagnostics(kube, namespace)}"
        yield name
    finally:
        kube.run("delete", "mmdeploy", name, "-n", namespace, "--wait=true", "--timeout=60s", check=False)
        wait_for(
            f"the pods of {name} gone",
            lambda: not kube.items("pods", namespace, f"triptych.dev/deployment={name}"),
            timeout=120,
            interval=1,
        )


@contextmanager
def frontend(kube: Kube, namespace: str, name: str) -> Iterator[openai.OpenAI]:
    """The frontend Service through `kubectl port-forward` on a free loopback port, as an openai client."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    forward = subprocess.Popen(
        [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "port-forward", "-n", namespace,
         "--address", "127.0.0.1", f"service/{name}-frontend", f"{port}:8000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert forward.poll() is None, (
            f"port-forward exited: {forward.stderr.read() if forward.stderr else ''}"
        )
        try:
            return httpx.get(f"{base}/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the port-forward to the frontend", up, timeout=30, interval=0.3)
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60, max_retries=0)
    finally:
        stop_process(forward, grace_s=10)


def _answer(client: openai.OpenAI, content: Any) -> Answer:
    return streamed_answer(client, MODEL, content, max_tokens=MAX_TOKENS)


def _stream(client: openai.OpenAI, content: Any) -> str:
    return _answer(client, content).text


def _metrics(kube: Kube, namespace: str, pod: str) -> str:
    """A pod's /metrics through the API server's pod proxy (the pod runs on the real node)."""
    return kube.run("get", "--raw", f"/api/v1/namespaces/{namespace}/pods/{pod}:9090/proxy/metrics").stdout


_REQUESTS = re.compile(r"^triptych_requests_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)


def _requests_total(text: str) -> float:
    return sum(float(v) for v in _REQUESTS.findall(text))


def _refused(client: openai.OpenAI, url: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        _stream(client, _image_content(url))
    assert 400 <= info.value.status_code < 500, info.value
    return info.value


def _check_up(kube: Kube, namespace: str, name: str, mode: str) -> list[dict[str, Any]]:
    """Every pod on the real node and Ready; `kubectl get mmdeploy` shows every role ready/desired."""
    pods = _pods(kube, namespace, name)
    roles = {p["metadata"]["labels"]["triptych.dev/role"] for p in pods}
    assert roles == set(ROLES_BY_MODE[mode])
    for pod in pods:
        assert pod["spec"]["nodeName"] == REAL_NODE, pod["metadata"]["name"]
        assert pod["spec"]["initContainers"][0]["name"] == "prepare-model"
        ready = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        assert [c["status"] for c in ready] == ["True"], pod["metadata"]["name"]
    got = kube.json("get", "mmdeploy", name, "-n", namespace)
    # Absent roles print as empty columns, so the row is read by its values, not by position.
    row = kube.run("get", "mmdeploy", name, "-n", namespace).stdout.splitlines()[1].split()
    assert row[:3] == [name, "reference", mode], row
    assert "True" in row, row
    for role in ROLES_BY_MODE[mode]:
        summary = got["status"]["summary"][role]
        ready_count, desired = summary.split("/")
        assert ready_count == desired != "0", (role, summary)
        assert summary in row, (role, row)
    return pods


def _serves_and_metrics_move(
    kube: Kube, namespace: str, name: str, mode: str, client: openai.OpenAI, *, expected: dict[str, Answer]
) -> None:
    """Same greedy tokens as the in-process engine; every role's /metrics scrapeable and moving."""
    pods = _check_up(kube, namespace, name, mode)

    def by_role() -> dict[str, float]:
        """Every pod's /metrics scraped; triptych_requests_total summed per role (routing picks the pod)."""
        out: dict[str, float] = dict.fromkeys(ROLES_BY_MODE[mode], 0.0)
        for pod in pods:
            text = _metrics(kube, namespace, pod["metadata"]["name"])
            assert "triptych_queue_depth{" in text, pod["metadata"]["name"]
            out[pod["metadata"]["labels"]["triptych.dev/role"]] += _requests_total(text)
        return out

    before = by_role()
    # Token-identical: the generated ids and the prompt's (placeholders expanded), not just the text.
    assert _answer(client, TEXT) == expected["text"]
    assert _answer(client, _image_content(_data_url(_png(7)))) == expected["image"]
    assert _answer(client, _image_content(_data_url(_png(7)))) == expected["image"]  # encoder-cache hit
    after = by_role()
    for role, count in before.items():
        assert after[role] > count, f"{role}: triptych_requests_total did not move ({count} -> {after[role]})"


# ------------------------------------------------------------------------------------------------ tests


LOCAL_MEDIA = """
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Mi}}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {{namespace: {namespace}, name: photos}}
  hostPath: {{path: {path}, type: Directory}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: photos, namespace: {namespace}}}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: {pv}
  resources: {{requests: {{storage: 1Mi}}}}
"""


@contextmanager
def local_media(kube: Kube, namespace: str, files: dict[str, bytes]) -> Iterator[None]:
    """A PVC `photos` bound to a hostPath PV on the real node (this machine) holding `files`."""
    with tempfile.TemporaryDirectory(prefix="triptych-media-") as tmp:
        folder = Path(tmp)
        folder.chmod(0o755)  # the frontend's process must be able to read it, whatever its user
        for file, data in files.items():
            (folder / file).write_bytes(data)
            (folder / file).chmod(0o644)
        pv = f"{namespace}-photos"
        kube.run("apply", "-f", "-", stdin=LOCAL_MEDIA.format(pv=pv, namespace=namespace, path=folder))
        try:
            yield
        finally:
            kube.run("delete", "pv", pv, "--wait=false", check=False)


def test_epd_aggregated_with_local_media(kube: Kube, namespace: str, expected: dict[str, Answer]) -> None:
    """EPD, with file:// media from a PVC the operator mounts read-only at media.allowedLocalMediaPath in
    the frontend: a file there gives the answer its bytes give as a data URL; a path outside is refused."""
    obj = _example("reference-aggregated.yaml", namespace)
    obj["spec"]["media"] = {"allowedLocalMediaPath": "/media", "localMediaPVC": "photos"}
    photo = _png(5)
    with (
        local_media(kube, namespace, {"photo.png": photo}),
        deployed(kube, obj) as name,
        frontend(kube, namespace, name) as client,
    ):
        _serves_and_metrics_move(kube, namespace, name, "EPD", client, expected=expected)
        by_file = _answer(client, _image_content("file:///media/photo.png"))
        assert by_file == _answer(client, _image_content(_data_url(photo)))
        error = _refused(client, "file:///etc/hostname")
        assert error.status_code == 403, error.message
        assert _refused(client, "file:///media/absent.png").status_code in (403, 404, 422)


MEDIA_SERVER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: media}
spec:
  replicas: 1
  selector: {matchLabels: {app: media}}
  template:
    metadata: {labels: {app: media}}
    spec:
      nodeSelector: {triptych.dev/node-kind: real}
      containers:
      - name: media
        image: localhost/triptych/echo:dev
        imagePullPolicy: Never
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1}
        resources: {requests: {cpu: 10m, memory: 32Mi}}
---
apiVersion: v1
kind: Service
metadata: {name: media}
spec:
  selector: {app: media}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_e_pd_with_http_media(kube: Kube, namespace: str, expected: dict[str, Answer]) -> None:
    kube.run("apply", "-n", namespace, "-f", "-", stdin=MEDIA_SERVER)
    kube.run("rollout", "status", "deployment/media", "-n", namespace, "--timeout=90s", timeout=100)
    obj = _example("reference-epd-http-media.yaml", namespace)
    with deployed(kube, obj) as name, frontend(kube, namespace, name) as client:
        _serves_and_metrics_move(kube, namespace, name, "E/PD", client, expected=expected)

        # http media from the in-cluster media Service (allowed by the example's media settings) give the
        # same answer as the same bytes sent as a data URL.
        query = "image.png?w=64&h=48&seed=3"
        served = subprocess.run(
            [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "get", "--raw",
             f"/api/v1/namespaces/{namespace}/services/media:80/proxy/{query}"],
            capture_output=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert served.startswith(b"\x89PNG")
        by_url = _stream(client, _image_content(f"http://media/{query}"))
        assert by_url == _stream(client, _image_content(_data_url(served)))

        # Private destinations the media settings do not allow are refused, and the reason is given to the
        # client and written in the frontend's log.
        for url in ("http://kubernetes.default.svc/", "http://10.88.0.1:10250/pods"):
            error = _refused(client, url)
            assert error.status_code == 403
            assert "not in the allowed domains" in str(error.message), error.message
        log = kube.run("logs", f"deployment/{name}-frontend", "-n", namespace).stdout
        assert "is not in the allowed domains" in log, log[-2000:]


def _traffic(client: openai.OpenAI, stop: threading.Event, outcomes: list[str], worker: int) -> None:
    seed = 1000 * (worker + 1)
    while not stop.is_set():
        seed += 1  # a new image each time: every request needs the encode pool
        try:
            _stream(client, _image_content(_data_url(_png(seed))))
            outcomes.append("ok")
        except openai.APIError as exc:
            outcomes.append(f"error: {exc}")


def _ready_encoders(kube: Kube, namespace: str, name: str, other_than: str) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in _pods(kube, namespace, name)
        if p["metadata"]["labels"]["triptych.dev/role"] == "encode"
        and p["metadata"]["name"] != other_than
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def test_e_p_d_and_encode_pod_loss(kube: Kube, namespace: str, expected: dict[str, Answer]) -> None:
    obj = _example("reference-epd.yaml", namespace)
    obj["spec"]["roles"]["encode"]["replicas"] = 2
    with deployed(kube, obj) as name, frontend(kube, namespace, name) as client:
        _serves_and_metrics_move(kube, namespace, name, "E/P/D", client, expected=expected)

        # The default media policy refuses private destinations, by name or by address, and says why.
        error = _refused(client, "http://kubernetes.default.svc/")
        assert error.status_code == 403
        assert "is private" in str(error.message), error.message
        error = _refused(client, "http://169.254.169.254/latest/meta-data/")
        assert error.status_code == 403
        assert "169.254.169.254" in str(error.message), error.message

        # An encode pod deleted mid-traffic costs at most the requests in flight; the Deployment restores it.
        concurrency = 2
        stop = threading.Event()
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_traffic, args=(client, stop, outcomes, i), daemon=True)
            for i in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            wait_for("traffic flowing", lambda: outcomes.count("ok") >= 4, timeout=60)
            victim = _ready_encoders(kube, namespace, name, "")[0]
            kube.run("delete", "pod", victim, "-n", namespace, "--wait=false")
            at_delete = len(outcomes)
            wait_for("more traffic after the deletion", lambda: len(outcomes) >= at_delete + 8, timeout=90)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=70)
        assert not any(t.is_alive() for t in threads), "a request hung"
        failures = [o for o in outcomes if o != "ok"]
        assert len(failures) <= concurrency, failures
        wait_for(
            "the encode Deployment restored to 2 ready pods",
            lambda: len(_ready_encoders(kube, namespace, name, victim)) == 2,
            timeout=180,
            interval=2,
        )
        _check_up(kube, namespace, name, "E/P/D")
        assert _answer(client, _image_content(_data_url(_png(7)))) == expected["image"]
