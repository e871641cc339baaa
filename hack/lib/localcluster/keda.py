"""``hack/keda up | down | status``: a real KEDA on the local cluster, for the opt-in tier (make test-keda).

KEDA ``KEDA_VERSION`` (hack/versions.env) built from its Go modules by ``hack/build-tools keda``, cached with
the cluster's binaries: its operator, which evaluates a ScaledObject's triggers (a Prometheus query, say) and
keeps a HorizontalPodAutoscaler for it, and its metrics API server, which serves those values as
``external.metrics.k8s.io`` behind an APIService, where kube-controller-manager's HPA reads them.

How it runs, and why: as host processes, like CoreDNS, not as pods: pods would need an image with the binaries
copied in from the cache (image builds take the repository as their context), certificates in a Secret, and a
Prometheus listening where pods reach it. KEDA's own ``make run`` runs its operator the same way.
- Both processes authenticate as KEDA's ServiceAccount ``keda/keda-operator`` (a kubeconfig with a token of
  it), so what KEDA may do is what its own RBAC, applied from its release, allows.
- The operator's gRPC metrics service, probes and metrics listen on loopback; the metrics server serves TLS on
  the bridge address, where the API server reaches it through a Service without selector and an
  EndpointSlice naming that address (as kube-dns's does); the APIService trusts our CA (caBundle).
- One certificate (pki.py) serves and authenticates both ends of the gRPC link and serves the metrics API, as
  KEDA's own certificate rotation would make it (off here: it writes a Secret for pods to mount).
- What is left out: KEDA's admission webhooks (not built) and its in-cluster Deployments and Services.

It needs the API server's aggregation layer (configs.kwokctl_config): a cluster started before that was
configured has to be restarted once (``hack/cluster down && hack/cluster up``); ``up`` says so.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localcluster import network, pki
from localcluster.cluster import Cluster
from localcluster.config import (
    BRIDGE_IP,
    CLUSTER_DOMAIN,
    KEDA_COMPONENTS,
    REAL_NODE,
    Paths,
    PortsFile,
    Settings,
    cache_dir,
    free_port,
)
from localcluster.procs import ClusterError, read_pid, start_ready, stop_component, tier_main, wait_until
from localcluster.tools import build_binaries, module_source

NAMESPACE = "keda"
SERVICE_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
APISERVICE = "v1beta1.external.metrics.k8s.io"
ADAPTER, OPERATOR = KEDA_COMPONENTS
MODULE = "github.com/kedacore/keda/v2"
# The part of KEDA's install (config/default) applied as it is; its Deployments, Services, APIService and
# admission webhooks are not (see the module's docstring).
INSTALLED_KINDS = frozenset(
    {"Namespace", "CustomResourceDefinition", "ServiceAccount", "Role", "ClusterRole", "RoleBinding",
     "ClusterRoleBinding"}
)  # fmt: skip
# Lifetime of the processes' ServiceAccount token; `hack/keda up` after `down` makes a new one.
TOKEN_DURATION = "720h"
LABELS = {"app.kubernetes.io/name": METRICS_SERVICE, "app.kubernetes.io/part-of": "keda-operator"}


def log(msg: str) -> None:
    print(f"keda: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Ports(PortsFile):
    """Chosen once per ``up`` (free at that moment) and kept in ``paths.keda/ports.json`` for ``status``."""

    operator_grpc: int  # loopback: the metrics server asks the operator for values here (mTLS)
    operator_probe: int  # loopback: /healthz, /readyz
    operator_metrics: int  # loopback: Prometheus metrics of the operator
    adapter_secure: int  # bridge address: external.metrics.k8s.io, for the API server
    # The metrics server's own Prometheus metrics: KEDA v2.21 binds them on every interface (":PORT"), with no
    # flag for the address; nothing here reads them, and network.fence_inbound drops what comes for them on
    # any interface but loopback and the bridge.
    adapter_metrics: int

    @classmethod
    def pick(cls, apiserver_port: int) -> Ports:
        """Five distinct free ports; never the API server's, which is free on loopback but whose loopback
        connections are sent to the bridge address (network.py's DNAT), to the API server."""
        taken = [apiserver_port]
        # (The metrics server's own metrics bind every address: the port must be free on all of them.)
        for host in ("127.0.0.1", "127.0.0.1", "127.0.0.1", BRIDGE_IP, "0.0.0.0"):
            taken.append(free_port(host, exclude=taken))
        grpc, probe, metrics, secure, adapter_metrics = taken[1:]
        return cls(grpc, probe, metrics, adapter_secure=secure, adapter_metrics=adapter_metrics)


# --- pure builders ----------------------------------------------------------------------------------------
def installed_objects(install: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects of KEDA's install that are applied as they are: namespace, CRDs, ServiceAccount, RBAC."""
    return [obj for obj in install if obj.get("kind") in INSTALLED_KINDS]


def metrics_api_objects(adapter_port: int, ca_pem: bytes) -> list[dict[str, Any]]:
    """The metrics server's Service (no selector: no pod backs it), its EndpointSlice (the bridge address,
    where the host process listens) and the APIService, which trusts ``ca_pem``. The API server resolves the
    APIService's port 443 to the slice's port of the same name (--enable-aggregator-routing)."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "labels": LABELS},
        "spec": {"ports": [{"name": "https", "port": 443, "targetPort": adapter_port, "protocol": "TCP"}]},
    }
    endpoints = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{METRICS_SERVICE}-host",
            "namespace": NAMESPACE,
            "labels": {
                **LABELS,
                "kubernetes.io/service-name": METRICS_SERVICE,
                "endpointslice.kubernetes.io/managed-by": "triptych-hack",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}, "nodeName": REAL_NODE}],
        "ports": [{"name": "https", "port": adapter_port, "protocol": "TCP"}],
    }
    group, version = "external.metrics.k8s.io", "v1beta1"
    apiservice = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": APISERVICE, "labels": LABELS},
        "spec": {
            "service": {"name": METRICS_SERVICE, "namespace": NAMESPACE, "port": 443},
            "group": group,
            "version": version,
            "caBundle": base64.b64encode(ca_pem).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    return [service, endpoints, apiservice]


def operator_command(binary: Path, certs: Path, ports: Ports) -> list[str]:
    return [
        str(binary),
        "--leader-elect=false",  # one process, and nothing to hand over to
        "--enable-cert-rotation=false",  # our certificate (pki.py), in --cert-dir
        f"--cert-dir={certs}",
        f"--metrics-service-bind-address=127.0.0.1:{ports.operator_grpc}",
        f"--health-probe-bind-address=127.0.0.1:{ports.operator_probe}",
        f"--metrics-bind-address=127.0.0.1:{ports.operator_metrics}",
        "--zap-log-level=info",
        "--zap-encoder=console",
        "--zap-time-encoding=rfc3339",
    ]


def adapter_command(binary: Path, certs: Path, kubeconfig: Path, ports: Ports) -> list[str]:
    return [
        str(binary),
        f"--bind-address={BRIDGE_IP}",
        f"--secure-port={ports.adapter_secure}",
        f"--tls-cert-file={certs / 'tls.crt'}",
        f"--tls-private-key-file={certs / 'tls.key'}",
        # Also where its gRPC client finds ca.crt, tls.crt and tls.key for the link to the operator.
        f"--cert-dir={certs}",
        f"--metrics-service-address=127.0.0.1:{ports.operator_grpc}",
        f"--port={ports.adapter_metrics}",
        # Outside a pod there is no in-cluster configuration: each of its clients is told its kubeconfig.
        f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--zap-log-level=info",
        "--zap-encoder=console",
    ]


def process_env(kubeconfig: Path) -> dict[str, str]:
    """What KEDA reads from a pod's environment, and nothing of this shell's (no proxy settings)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE,
        "WATCH_NAMESPACE": "",  # all namespaces
    }


# --- steps --------------------------------------------------------------------------------------------------
class Keda:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.paths: Paths = cluster.paths
        self.certs = self.paths.keda / "certs"
        self.kubeconfig = self.paths.keda / "kubeconfig"
        self.ports_file = self.paths.keda / "ports.json"

    def running(self) -> dict[str, int | None]:
        return {c: read_pid(self.paths.pidfile(c)) for c in KEDA_COMPONENTS}

    def apiservice_available(self) -> bool:
        got = self.cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False, timeout=15)
        if got.returncode != 0:
            return False
        conditions = json.loads(got.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

    def require_aggregation_layer(self) -> None:
        """The API server publishes its front-proxy settings in this ConfigMap; without them no extension
        API server can tell who a request is for."""
        got = self.cluster.kubectl(
            "get", "configmap", "extension-apiserver-authentication", "-n", "kube-system", "-o", "json",
            check=False, timeout=15,
        )  # fmt: skip
        data = json.loads(got.stdout).get("data", {}) if got.returncode == 0 else {}
        if "requestheader-client-ca-file" not in data:
            raise ClusterError(
                "the API server runs without the aggregation layer (this cluster was started before it was "
                "configured): restart the cluster once with 'hack/cluster down && hack/cluster up'"
            )

    def install_manifest(self) -> list[dict[str, Any]]:
        """KEDA's own install, ``config/default`` of the release's module source, through kubectl's kustomize
        (it patches two CRDs)."""
        source = module_source(MODULE, self.cluster.versions["KEDA_VERSION"])
        built = self.cluster.kubectl("kustomize", str(source / "config/default"), what="kubectl kustomize")
        return self.cluster.objects(built.stdout, "KEDA's manifest to JSON")

    def issue_certificates(self) -> bytes:
        """ca.crt, tls.crt, tls.key in ``certs`` (KEDA's names); the CA's key stays outside that folder."""
        ca = pki.ensure_ca(self.paths.keda / "ca", "triptych-keda-ca")
        service = f"{METRICS_SERVICE}.{NAMESPACE}.svc"
        pki.issue(
            ca,
            pki.KeyPair(self.certs / "tls.crt", self.certs / "tls.key"),
            "keda",
            usages=["serverAuth", "clientAuth"],
            # The API server checks the Service's name (<service>.<namespace>.svc) whatever address it dials;
            # the gRPC client dials the operator on loopback; `up` probes the metrics server on the bridge.
            dns_names=[service, f"{service}.{CLUSTER_DOMAIN}"],
            ips=["127.0.0.1", BRIDGE_IP],
        )
        ca_pem = ca.crt.read_bytes()
        (self.certs / "ca.crt").write_bytes(ca_pem)
        return ca_pem

    def up(self) -> None:
        t0 = time.monotonic()
        if not self.cluster.control_plane_up():
            raise ClusterError("the local cluster is not up (hack/cluster up)")
        self.require_aggregation_layer()
        if all(self.running().values()) and self.apiservice_available():
            log("already up; nothing to do")
            return
        self.stop_processes()  # what is left of an earlier `up`
        bins = build_binaries("keda")["keda"]
        t_build = time.monotonic() - t0
        self.paths.keda.mkdir(parents=True, exist_ok=True)
        install = self.install_manifest()
        self.cluster.apply(installed_objects(install), "KEDA's namespace, CRDs and RBAC")
        crds = [o["metadata"]["name"] for o in install if o["kind"] == "CustomResourceDefinition"]
        self.cluster.wait_established(crds, "KEDA's CRDs established")
        ca_pem = self.issue_certificates()
        self.cluster.service_account_kubeconfig(
            NAMESPACE, SERVICE_ACCOUNT, self.kubeconfig, duration=TOKEN_DURATION
        )
        ports = Ports.pick(Settings.load(self.paths.settings).apiserver_port)
        ports.save(self.ports_file)
        env = process_env(self.kubeconfig)

        start_ready(
            self.paths, OPERATOR, operator_command(bins / "keda", self.certs, ports),
            lambda: _get_ok(f"http://127.0.0.1:{ports.operator_probe}/readyz"), deadline_s=90, env=env,
        )  # fmt: skip
        # Its own /metrics binds every interface (no flag for the address in v2.21): fenced to this machine.
        network.fence_inbound(ports.adapter_metrics)
        command = adapter_command(bins / "keda-adapter", self.certs, self.kubeconfig, ports)
        tls = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        pid = start_ready(
            self.paths, ADAPTER, command,
            lambda: _get_ok(f"https://{BRIDGE_IP}:{ports.adapter_secure}/readyz", tls),
            deadline_s=90, env=env,
        )  # fmt: skip
        self.cluster.apply(metrics_api_objects(ports.adapter_secure, ca_pem), "KEDA's metrics APIService")
        # The API server checks the APIService by calling it, as an HPA's reads will: through the front proxy.
        try:
            wait_until(ADAPTER, self.apiservice_available, deadline_s=90, paths=self.paths, pid=pid)
        except ClusterError as exc:
            got = self.cluster.kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
            conditions = json.loads(got.stdout).get("status", {}).get("conditions") if got.stdout else None
            raise ClusterError(f"{exc}: {APISERVICE} not Available: {conditions}", exc.log) from None
        log(
            f"up: binaries {t_build:.1f} s, total {time.monotonic() - t0:.1f} s; operator and metrics server "
            f"logs in {self.paths.logs}"
        )

    def stop_processes(self) -> None:
        for component in KEDA_COMPONENTS:
            stop_component(self.paths, component)

    def down(self) -> None:
        t0 = time.monotonic()
        if self.cluster.control_plane_up():
            if all(self.running().values()):
                # ScaledObjects carry KEDA's finalizer: delete them while KEDA runs (it removes their HPAs),
                # or their namespaces could not be deleted after.
                self.cluster.kubectl(
                    "delete", "scaledobjects.keda.sh,scaledjobs.keda.sh", "--all", "--all-namespaces",
                    "--wait=true", "--timeout=60s", check=False, timeout=90,
                )  # fmt: skip
            # An APIService whose server is gone fails discovery, and with it every namespace deletion: it
            # goes before the processes do.
            self.cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
            self.cluster.kubectl(
                "delete", "-n", NAMESPACE, "service", METRICS_SERVICE, "--ignore-not-found", check=False
            )
            self.cluster.kubectl(
                "delete", "-n", NAMESPACE, "endpointslice", f"{METRICS_SERVICE}-host", "--ignore-not-found",
                check=False,
            )  # fmt: skip
        self.stop_processes()
        network.unfence_inbound(
            Ports.load(self.ports_file).adapter_metrics if self.ports_file.exists() else None
        )
        log(f"down in {time.monotonic() - t0:.1f} s (CRDs, RBAC and the keda namespace stay)")

    def status(self) -> int:
        pids = self.running()
        available = self.cluster.control_plane_up() and self.apiservice_available()
        ok = all(pids.values()) and available
        print(f"keda: {'up' if ok else 'down' if not any(pids.values()) else 'degraded'}")
        for component, pid in pids.items():
            print(f"  {component}: {f'running (pid {pid})' if pid else 'not running'}")
        print(f"  APIService {APISERVICE}: {'Available' if available else 'not available'}")
        if self.ports_file.exists():
            print(f"  ports: {json.dumps(asdict(Ports.load(self.ports_file)))}")
        return 0 if ok else 1


def _get_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as resp:
        return int(resp.status) == 200


def main(argv: list[str] | None = None) -> int:
    keda = Keda(Cluster(Paths(cache_dir())))
    commands = {
        "up": ("build KEDA (once) and start it on the running cluster; a no-op when it is up", keda.up),
        "down": (
            "delete every ScaledObject/ScaledJob (while KEDA can finalize them) and the APIService, "
            "stop its processes (CRDs and RBAC stay)",
            keda.down,
        ),
        "status": ("its processes and APIService", keda.status),
    }
    return tier_main("hack/keda", __doc__, commands, argv)
