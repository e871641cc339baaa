"""Derived names fit Kubernetes' limits; selector labels are stable."""

from __future__ import annotations

import re

from triptych_contract import LABEL_DEPLOYMENT, LABEL_ROLE, ROLES
from triptych_operator.api import MAX_NAME_LENGTH
from triptych_operator.naming import child_name, labels, owner_reference, selector_labels, service_host

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_longest_name_fits_every_derived_name() -> None:
    name = "a" * MAX_NAME_LENGTH
    for role in ROLES:
        derived = child_name(name, role)
        assert len(derived) <= 63
        assert DNS_1035.match(derived)
    assert len(child_name(name, "frontend")) == 63


def test_labels() -> None:
    got = labels("demo", "encode", "vllm")
    assert got == {
        "app.kubernetes.io/name": "triptych",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "encode",
        "app.kubernetes.io/part-of": "triptych",
        "app.kubernetes.io/managed-by": "triptych-operator",
        "triptych.dev/backend": "vllm",
        LABEL_DEPLOYMENT: "demo",
        LABEL_ROLE: "encode",
    }
    assert selector_labels("demo", "encode") == {LABEL_DEPLOYMENT: "demo", LABEL_ROLE: "encode"}
    assert selector_labels("demo", "encode").items() <= got.items()


def test_service_host_and_owner() -> None:
    assert service_host("demo", "prefill", "ns") == "demo-prefill.ns.svc"
    assert owner_reference("demo", "u1") == {
        "apiVersion": "triptych.dev/v1alpha1",
        "kind": "MultimodalDeployment",
        "name": "demo",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
