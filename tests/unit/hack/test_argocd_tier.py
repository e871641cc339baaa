"""The pure parts of the opt-in Argo CD tier: what ``hack/argocd`` applies of the release, how its processes
get their settings, and where they listen (the tier itself runs with ``make test-argocd``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from localcluster import argocd

PORTS = argocd.Ports(redis=1001, repo_server=1002, repo_server_metrics=1003, controller_metrics=1004)


def _obj(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name}, **extra}


def test_the_release_s_crds_controller_rbac_and_settings_are_applied_in_the_argocd_namespace() -> None:
    install = [
        _obj("CustomResourceDefinition", "applications.argoproj.io"),
        *[_obj(k, "argocd-application-controller") for k in sorted(argocd.RBAC_KINDS)],
        _obj("ServiceAccount", "argocd-server"),  # a component we do not run
        _obj("ClusterRole", "argocd-server"),
        _obj("ConfigMap", "argocd-cm"),
        _obj("ConfigMap", "argocd-notifications-cm"),
        _obj("Secret", "argocd-secret"),
        _obj("StatefulSet", "argocd-application-controller"),
        _obj("Deployment", "argocd-repo-server"),
    ]
    chosen = {(o["kind"], o["metadata"]["name"]): o for o in argocd.release_objects(install)}
    assert set(chosen) == {
        ("CustomResourceDefinition", "applications.argoproj.io"),
        *[(k, "argocd-application-controller") for k in argocd.RBAC_KINDS],
        ("ConfigMap", "argocd-cm"),
        ("Secret", "argocd-secret"),
    }
    for (kind, _), obj in chosen.items():
        cluster_scoped = kind in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
        assert obj["metadata"].get("namespace") == (None if cluster_scoped else "argocd"), kind


def test_argocd_cm_carries_the_chart_s_health_check_under_argo_cd_s_key() -> None:
    data = argocd.argocd_cm_data(argocd.HEALTH_LUA.read_text())
    assert data == {
        "resource.customizations.health.triptych.dev_MultimodalDeployment": argocd.HEALTH_LUA.read_text()
    }
    objects = argocd.configured(
        [_obj("ConfigMap", "argocd-cm"), _obj("Secret", "argocd-secret")], {"argocd-cm": data}
    )
    assert objects[0]["data"] == data
    assert "data" not in objects[1]


def test_processes_read_the_cmd_params_configmap_through_the_release_s_env_mapping() -> None:
    def from_params(name: str, key: str) -> dict[str, Any]:
        ref = {"name": "argocd-cmd-params-cm", "key": key, "optional": True}
        return {"name": name, "valueFrom": {"configMapKeyRef": ref}}

    env_spec = [
        {"name": "ARGOCD_CONTROLLER_REPLICAS", "value": "1"},
        {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "argocd-redis", "key": "auth"}}},
        from_params("REDIS_SERVER", "redis.server"),
        from_params("ARGOCD_APPLICATION_CONTROLLER_REPO_SERVER", "repo.server"),
        from_params("UNSET", "otlp.address"),
    ]
    pod = {"containers": [{"env": env_spec}]}
    install = [_obj("StatefulSet", "argocd-application-controller", spec={"template": {"spec": pod}})]
    values = {
        ("ConfigMap", "argocd-cmd-params-cm"): argocd.cmd_params(PORTS),
        ("Secret", "argocd-redis"): {"auth": "pw"},
    }
    env = argocd.workload_env(install, "argocd-application-controller", values)
    assert env == {
        "ARGOCD_CONTROLLER_REPLICAS": "1",
        "REDIS_PASSWORD": "pw",
        "REDIS_SERVER": "127.0.0.1:1001",
        "ARGOCD_APPLICATION_CONTROLLER_REPO_SERVER": "127.0.0.1:1002",
    }


def test_everything_listens_on_loopback_but_the_fenced_controller_metrics() -> None:
    params = argocd.cmd_params(PORTS)
    assert params["reposerver.listen.address"] == "127.0.0.1"
    assert params["controller.resource.health.persist"] == "true"
    repo = argocd.repo_server_command(Path("/b/argocd-repo-server"), PORTS)
    assert repo[0].endswith("/argocd-repo-server")  # the multi-call binary picks its component by this name
    assert {"--port=1002", "--metrics-address=127.0.0.1", "--metrics-port=1003"} <= set(repo)
    controller = argocd.controller_command(Path("/b/argocd-application-controller"), PORTS)
    assert controller == ["/b/argocd-application-controller", "--metrics-port=1004"]
    conf = argocd.redis_config(1001, "pw", Path("/d")).splitlines()
    assert {"bind 127.0.0.1", "port 1001", "requirepass pw", 'save ""', "protected-mode yes"} <= set(conf)


def test_the_default_project_is_the_one_argocd_server_would_create() -> None:
    project = argocd.default_project()
    assert project["metadata"] == {"name": "default", "namespace": "argocd"}
    assert project["spec"]["destinations"] == [{"server": "*", "namespace": "*"}]
