"""The deployment's egress NetworkPolicy (spec.networkPolicy): one per MultimodalDeployment, over all its
pods. Its public ranges are the table the frontend's SSRF guard uses (`triptych_contract.networks`), so the
network refuses what the guard refuses."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from triptych_contract.networks import allowed_ip_blocks

from triptych_operator.api import MultimodalDeploymentSpec
from triptych_operator.naming import (
    Owner,
    deployment_labels,
    network_policy_name,
    owned_selector,
    owner_reference,
)
from triptych_operator.settings import OperatorSettings

# The port NATS listens on when its URL names none.
NATS_DEFAULT_PORT = 4222
DNS_PORT = 53


def _nats_peers(nats_url: str) -> list[dict[str, Any]]:
    """Egress rules for the request plane: every server of a (comma-separated) NATS URL. An in-cluster
    Service (`<svc>.<namespace>.svc[.<domain>]`) is reached as the pods of its namespace on its port (a
    NetworkPolicy sees the pod the Service forwards to, not the Service); an IP literal as itself. Any other
    host name is only reachable where the public rule or networkPolicy.allowedCIDRs cover its address."""
    rules: list[dict[str, Any]] = []
    for server in nats_url.split(","):
        url = urlsplit(server.strip())
        host, port = url.hostname or "", url.port or NATS_DEFAULT_PORT
        ports = [{"protocol": "TCP", "port": port}]
        parts = host.split(".")
        if len(parts) >= 3 and parts[2] == "svc":
            selector = {"matchLabels": {"kubernetes.io/metadata.name": parts[1]}}
            rules.append({"to": [{"namespaceSelector": selector}], "ports": ports})
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            continue
        rules.append({"to": [{"ipBlock": {"cidr": f"{address}/{address.max_prefixlen}"}}], "ports": ports})
    return rules


def build_network_policy(
    owner: Owner, spec: MultimodalDeploymentSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """The deployment's egress NetworkPolicy (spec.networkPolicy): every pod of the deployment may reach
    DNS, the deployment's own pods, the NATS servers, and what the media guard allows (the shared table in
    `triptych_contract.networks`, opened for private ranges by media.allowPrivateNetworks), plus
    allowedCIDRs. Ingress is left alone: the frontend's clients and the metrics scrapers vary per cluster."""
    public = allowed_ip_blocks(allow_private_networks=spec.media.allow_private_networks)
    dns_ports = [{"protocol": protocol, "port": DNS_PORT} for protocol in ("UDP", "TCP")]
    egress: list[dict[str, Any]] = [
        {"ports": dns_ports},
        {"to": [{"podSelector": {"matchLabels": owned_selector(owner.name)}}]},
        *_nats_peers(settings.nats_url),
        {
            "to": [
                {"ipBlock": {"cidr": cidr, "except": list(excepts)} if excepts else {"cidr": cidr}}
                for cidr, excepts in public
            ]
        },
    ]
    if spec.network_policy.allowed_cidrs:
        egress.append({"to": [{"ipBlock": {"cidr": c}} for c in spec.network_policy.allowed_cidrs]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(owner.name),
            "namespace": owner.namespace,
            "labels": deployment_labels(owner.name, spec.backend),
            "ownerReferences": [owner_reference(owner.name, owner.uid)],
        },
        "spec": {
            "podSelector": {"matchLabels": owned_selector(owner.name)},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


__all__ = ["build_network_policy"]
