"""The pure parts of the opt-in KEDA tier: the API server's aggregation flags, the certificates, and what
``hack/keda`` applies and runs (the tier itself runs with ``make test-keda``)."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

from localcluster import cluster, configs, keda, pki
from localcluster.config import BRIDGE_IP, Paths

PATHS = Paths(Path("/cache"))


def apiserver_args() -> dict[str, str]:
    bins = {"kubernetes": Path("/k"), "etcd": Path("/e"), "kwok": Path("/w")}
    text = configs.kwokctl_config(PATHS, bins, kube_version="v1.35.4", apiserver_port=1234, stages=[])
    doc = json.loads(text.split("---\n")[0])
    patch = next(p for p in doc["componentsPatches"] if p["name"] == "kube-apiserver")
    return {a["key"]: a["value"] for a in patch["extraArgs"]}


def test_the_api_server_gets_the_aggregation_layer_from_a_front_proxy_ca_of_its_own() -> None:
    args = apiserver_args()
    front = PATHS.front_proxy_pki
    assert args["requestheader-client-ca-file"] == str(front / "ca.crt")
    assert args["requestheader-allowed-names"] == pki.FRONT_PROXY_CLIENT_CN
    assert args["proxy-client-cert-file"] == str(front / "client.crt")
    assert args["proxy-client-key-file"] == str(front / "client.key")
    assert args["requestheader-username-headers"] == "X-Remote-User"
    assert args["requestheader-group-headers"] == "X-Remote-Group"
    assert args["requestheader-extra-headers-prefix"] == "X-Remote-Extra-"
    assert args["enable-aggregator-routing"] == "true"
    # Not kwokctl's CA (the cluster's): a certificate of the cluster CA must not pose as the proxy.
    assert not args["requestheader-client-ca-file"].startswith(str(PATHS.pki))


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_front_proxy_client_certificate_is_made_once_for_client_auth_by_its_ca(tmp_path: Path) -> None:
    ca, client = pki.front_proxy(tmp_path)
    assert "OK" in _openssl("verify", "-CAfile", str(ca.crt), str(client.crt))
    text = _openssl("x509", "-in", str(client.crt), "-noout", "-subject", "-ext", "extendedKeyUsage")
    assert f"CN = {pki.FRONT_PROXY_CLIENT_CN}" in text
    assert "TLS Web Client Authentication" in text
    assert "Server" not in text
    before = client.crt.read_bytes()
    assert pki.front_proxy(tmp_path)[1].crt.read_bytes() == before  # kept, not reissued
    assert oct(client.key.stat().st_mode & 0o777) == "0o600"


def test_a_served_certificate_names_what_its_clients_dial(tmp_path: Path) -> None:
    ca = pki.ensure_ca(tmp_path / "ca", "test-ca")
    leaf = pki.issue(
        ca,
        pki.KeyPair(tmp_path / "tls.crt", tmp_path / "tls.key"),
        "keda",
        usages=["serverAuth", "clientAuth"],
        dns_names=["svc.ns.svc"],
        ips=["127.0.0.1", BRIDGE_IP],
    )
    assert "OK" in _openssl("verify", "-CAfile", str(ca.crt), str(leaf.crt))
    san = _openssl("x509", "-in", str(leaf.crt), "-noout", "-ext", "subjectAltName")
    assert all(name in san for name in ("DNS:svc.ns.svc", "IP Address:127.0.0.1", f"IP Address:{BRIDGE_IP}"))


def test_only_namespace_crds_and_rbac_of_kedas_install_are_applied_as_they_are() -> None:
    applied = ["Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
               "Role", "RoleBinding"]  # fmt: skip
    replaced = ["Deployment", "Service", "APIService", "ValidatingWebhookConfiguration"]
    install: list[dict[str, Any]] = [{"kind": k, "metadata": {"name": k.lower()}} for k in applied + replaced]
    assert [o["kind"] for o in keda.installed_objects(install)] == applied


def test_the_apiservice_reaches_the_host_process_on_the_bridge_through_a_named_port() -> None:
    service, slice_, apiservice = keda.metrics_api_objects(23456, b"PEM")
    assert "selector" not in service["spec"]  # no pod backs it: the EndpointSlice is ours
    (port,) = service["spec"]["ports"]
    assert apiservice["spec"]["service"] == {
        "name": service["metadata"]["name"],
        "namespace": "keda",
        "port": 443,
    }
    assert port["port"] == 443
    (slice_port,) = slice_["ports"]
    assert slice_port == {"name": port["name"], "port": 23456, "protocol": "TCP"}
    assert slice_["metadata"]["labels"]["kubernetes.io/service-name"] == service["metadata"]["name"]
    assert slice_["endpoints"][0]["addresses"] == [BRIDGE_IP]
    assert base64.b64decode(apiservice["spec"]["caBundle"]) == b"PEM"
    assert "insecureSkipTLSVerify" not in apiservice["spec"]


def test_keda_processes_listen_on_loopback_and_the_bridge_and_know_their_kubeconfig() -> None:
    ports = keda.Ports(1001, 1002, 1003, adapter_secure=1004, adapter_metrics=1005)
    certs, kubeconfig = Path("/c"), Path("/k.json")
    operator = keda.operator_command(Path("/bin/keda"), certs, ports)
    assert "--enable-cert-rotation=false" in operator
    assert "--cert-dir=/c" in operator
    for flag in ("metrics-service-bind-address", "health-probe-bind-address", "metrics-bind-address"):
        assert any(a.startswith(f"--{flag}=127.0.0.1:") for a in operator), flag
    adapter = keda.adapter_command(Path("/bin/keda-adapter"), certs, kubeconfig, ports)
    assert f"--bind-address={BRIDGE_IP}" in adapter
    assert "--secure-port=1004" in adapter
    assert "--metrics-service-address=127.0.0.1:1001" in adapter
    for flag in ("lister-kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"):
        assert f"--{flag}=/k.json" in adapter
    env = keda.process_env(kubeconfig)
    assert env["KUBECONFIG"] == "/k.json"
    assert env["WATCH_NAMESPACE"] == ""
    assert not any("proxy" in k.lower() for k in env)


def test_kedas_kubeconfig_keeps_the_cluster_and_uses_the_token() -> None:
    admin = {
        "clusters": [
            {"name": "c", "cluster": {"server": "https://127.0.0.1:1", "certificate-authority": "/ca"}}
        ]
    }
    out = cluster.kubeconfig_for_token(admin, "tok", keda.SERVICE_ACCOUNT)
    assert out["clusters"] == admin["clusters"]
    assert out["users"] == [{"name": "keda-operator", "user": {"token": "tok"}}]
    assert out["contexts"][0]["context"] == {"cluster": "c", "user": "keda-operator"}
    # Argo CD's controller takes its namespace from the kubeconfig's context.
    scoped = cluster.kubeconfig_for_token(admin, "tok", "argocd-application-controller", "argocd")
    assert scoped["contexts"][0]["context"]["namespace"] == "argocd"
