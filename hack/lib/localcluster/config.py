"""Where the local cluster lives and how it is addressed: one place for paths, CIDRs, ports and versions."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[3]
HACK = REPO / "hack"


def read_versions() -> dict[str, str]:
    """The pinned versions in hack/versions.env (KEY=VALUE lines; comments allowed)."""
    versions: dict[str, str] = {}
    for raw in (HACK / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            versions[key.strip()] = value.strip()
    return versions


def cache_dir() -> Path:
    """Per-user cache for everything expensive; never inside the repository."""
    env = os.environ.get("TRIPTYCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "triptych"


# Addresses. Everything the cluster serves binds loopback or the bridge address below, which exists only on
# this machine; every CIDR the cluster hands out gets a blackhole route so nothing for it can leave.
BRIDGE = "triptych0"
BRIDGE_IP = "10.88.0.1"
NODE_POD_SUBNET = "10.88.0.0/24"  # the real node's pods, on the bridge
CLUSTER_POD_CIDR = "10.88.0.0/16"  # blackholed except the bridge subnet (a more specific route)
KWOK_POD_CIDR = "10.89.0.0/16"  # fake IPs kwok gives pods on GPU nodes: never reachable, always blackholed
KWOK_NODE_IP = "10.89.255.254"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
BLACKHOLES = (CLUSTER_POD_CIDR, KWOK_POD_CIDR, SERVICE_CIDR)

CLUSTER_NAME = "triptych"
REAL_NODE = "triptych-real"
NODE_KIND_LABEL = "triptych.dev/node-kind"
GPU_TAINT_KEY = "nvidia.com/gpu"
GPU_PRODUCTS = ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB")

# Fixed local ports of the real node's components (checked for clashes before start).
KUBELET_PORT = 10250  # on the bridge address: the API server reaches it there for logs/exec
KUBELET_HEALTHZ_PORT = 10248  # loopback
KUBE_PROXY_HEALTHZ_PORT = 10256  # loopback
KUBE_PROXY_METRICS_PORT = 10249  # loopback
COREDNS_READY_PORT = 8181  # loopback

PAUSE_IMAGE = "localhost/triptych/pause:3.10"

# KEDA's host processes (opt-in, ``hack/keda``); ``hack/cluster down`` stops them with the node's components.
KEDA_COMPONENTS = ("keda-metrics-apiserver", "keda-operator")
# Argo CD's host processes and their Redis (opt-in, ``hack/argocd``); stopped by ``hack/cluster down`` too.
ARGOCD_COMPONENTS = ("argocd-application-controller", "argocd-repo-server", "argocd-redis")


@dataclass(frozen=True)
class Paths:
    """Every file and folder of one cluster. ``state`` is removed by ``down``; ``containerd_root`` (images) is
    kept, so a later ``up`` does not re-import them."""

    cache: Path

    @property
    def state(self) -> Path:
        return self.cache / "cluster"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def run(self) -> Path:
        return self.state / "run"

    @property
    def kwok_workdir(self) -> Path:
        return self.state / "kwok"

    @property
    def kwok_cluster(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER_NAME

    @property
    def pki(self) -> Path:
        return self.kwok_cluster / "pki"

    @property
    def front_proxy_pki(self) -> Path:
        """The API server's front-proxy CA and client certificate (pki.front_proxy), ours, not kwokctl's."""
        return self.state / "front-proxy-pki"

    @property
    def keda(self) -> Path:
        """What ``hack/keda up`` writes: certificates, KEDA's kubeconfig, its ports."""
        return self.state / "keda"

    @property
    def argocd(self) -> Path:
        """What ``hack/argocd up`` writes: the controller's kubeconfig, Redis's configuration and data, the
        processes' home and configuration folders, the ports, the bare Git repository for trying examples."""
        return self.state / "argocd"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def settings(self) -> Path:
        return self.state / "settings.json"

    @property
    def containerd_root(self) -> Path:
        return self.cache / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.state / "cni" / "ipam"

    def pidfile(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def logfile(self, component: str) -> Path:
        return self.logs / f"{component}.log"


class PortsFile:
    """A frozen dataclass of ports a tier chose at ``up`` (each free at that moment), kept as JSON for
    ``status`` and ``down``."""

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))  # type: ignore[call-overload]

    @classmethod
    def load(cls, path: Path) -> Self:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class Settings:
    """Choices made once per cluster at ``up`` and read back by later commands."""

    apiserver_port: int
    gpu_nodes: int
    ip_forward_before: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, path: Path) -> Settings:
        return cls(**json.loads(path.read_text()))


def free_port(host: str = "127.0.0.1", below: int = 30000, exclude: Collection[int] = ()) -> int:
    """A free TCP port below the NodePort range (kube-proxy's NodePort rules match local addresses there),
    not in ``exclude`` (ports chosen already but not bound yet: the walk below returns the same port until
    something binds it)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if 1024 < port < below and port not in exclude:
            return port
    # The kernel's ephemeral range is usually above 30000: walk a fixed window instead.
    for port in range(20000, below):
        if port in exclude:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 30000")
