"""The opt-in Argo CD tier (``make test-argocd``; marker ``argocd``, skipped unless ``TRIPTYCH_ARGOCD=1``): a
real Argo CD keeps MultimodalDeployments applied from a Git repository and judges their health with the
chart's ``health.lua``, and renders the chart itself from Git as examples/argocd documents.

What is real: Argo CD v3.6.1's application controller and repo server (``hack/argocd``: built from its Go
modules, host processes against the local cluster, Debian's Redis), with the chart's health check installed
through ``argocd-cm``; the Git repository (a bare repository in the test's temporary folder, which the repo
server fetches over ``file://``; every change is a commit pushed to it); the local cluster's API server and
the operator installed by the chart (the operator e2e tests' ``operator`` fixture); the Applications of
examples/argocd (only their repository URL, path and destination namespace replaced); Lua 5.1 (Debian's
``lua5.1``), which runs ``health.lua`` on every version of the objects the test saw in the cluster.

What is not: the roles' pods run on kwok's fake GPU nodes, so Ready means scheduled and reported, nothing
serves (tests/e2e/pipeline serves); no Git webhook (argocd-server's, not run here) tells Argo CD of a push,
so after each push the test sets the refresh annotation that webhook sets instead of waiting for the
3-minute poll; the autoscaler stands in as ``kubectl scale`` on the role's MultimodalRole, which is what an
HPA or KEDA does through its /scale (tests/e2e/keda drives it with a real KEDA).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import lua51
from tests.e2e.conftest import CHART, REPO, externally_scaled, tier_up
from tests.e2e.operator.conftest import condition, on_kwok
from tests.kube import Kube, stop_process, wait_for

# The first run of `hack/argocd up` may build Argo CD (make test-argocd builds it before pytest starts).
pytestmark = [pytest.mark.argocd, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1800)]

ARGOCD_NS = "argocd"
EXAMPLES = REPO / "examples" / "argocd"
HEALTH_LUA = CHART / "argocd" / "health.lua"
# Every wait below is for something that takes a few seconds here (a refresh, a sync, kwok pods turning
# Ready); the deadlines are far beyond that.
DEADLINE_S = 180


@pytest.fixture(scope="module")
def argocd(operator: Kube) -> Iterator[Kube]:
    """Argo CD on the cluster (``hack/argocd up``, a no-op when it is up); stopped afterwards if started
    here."""
    with tier_up("argocd", up_timeout=1500):
        yield operator


# --- the Git side ---------------------------------------------------------------------------------------
class GitRepo:
    """A bare repository (what Argo CD fetches, at ``url``) and a clone the test commits in and pushes
    from."""

    def __init__(self, root: Path) -> None:
        self.bare, self.work = root / "gitops.git", root / "work"
        self.url = f"file://{self.bare}"
        subprocess.run(["git", "init", "-q", "--bare", "--initial-branch=main", str(self.bare)], check=True)
        subprocess.run(["git", "init", "-q", "--initial-branch=main", str(self.work)], check=True)
        self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args: str) -> str:
        env = {
            "GIT_AUTHOR_NAME": "triptych-test", "GIT_AUTHOR_EMAIL": "test@triptych.invalid",
            "GIT_COMMITTER_NAME": "triptych-test", "GIT_COMMITTER_EMAIL": "test@triptych.invalid",
            "HOME": str(self.work.parent), "PATH": "/usr/bin:/bin",
        }  # fmt: skip
        done = subprocess.run(
            ["git", "-C", str(self.work), *args], capture_output=True, text=True, env=env, timeout=60,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def write(self, name: str, obj: dict[str, Any]) -> None:
        (self.work / name).write_text(yaml.safe_dump(obj, sort_keys=False))

    def commit(self, message: str) -> str:
        """Commit everything in the clone, push it, and return the commit's SHA."""
        self.git("add", "--all")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


# --- the Argo CD side -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppState:
    """What Argo CD wrote in an Application's status."""

    sync: str | None
    revision: str | None
    health: str | None
    reconciled_at: str | None
    # (kind, name) -> (health status, message) of each resource, as the controller judged it
    resources: dict[tuple[str, str], tuple[str, str]]
    operation_started: str | None
    conditions: tuple[str, ...]  # the Application's own (ComparisonError, SyncError, ...), as "type: message"

    @classmethod
    def of(cls, app: dict[str, Any] | None) -> AppState:
        status = (app or {}).get("status") or {}
        resources = {
            (r["kind"], r["name"]): (r["health"]["status"], r["health"].get("message", ""))
            for r in status.get("resources") or []
            if r.get("health")
        }
        return cls(
            sync=(status.get("sync") or {}).get("status"),
            revision=(status.get("sync") or {}).get("revision"),
            health=(status.get("health") or {}).get("status"),
            reconciled_at=status.get("reconciledAt"),
            resources=resources,
            operation_started=(status.get("operationState") or {}).get("startedAt"),
            conditions=tuple(f"{c['type']}: {c.get('message', '')}" for c in status.get("conditions") or []),
        )


def application(example: str, name: str, repo_url: str, path: str, namespace: str) -> dict[str, Any]:
    """An Application of examples/argocd, with our name, repository, path and destination namespace."""
    app: dict[str, Any] = yaml.safe_load((EXAMPLES / example).read_text())
    app["metadata"]["name"] = name
    app["spec"]["source"].update(repoURL=repo_url, path=path)
    app["spec"]["destination"]["namespace"] = namespace
    return app


def refresh(kube: Kube, name: str) -> None:
    """What Argo CD's Git webhook does on a push: ask the controller to compare with Git again now."""
    kube.run(
        "annotate", "application", name, "-n", ARGOCD_NS, "argocd.argoproj.io/refresh=normal", "--overwrite"
    )


def app_state(kube: Kube, name: str) -> AppState:
    return AppState.of(kube.get("application", name, ARGOCD_NS))


def wait_app(kube: Kube, name: str, what: str, done: Callable[[AppState], bool]) -> AppState:
    def probe() -> AppState | None:
        state = app_state(kube, name)
        print(f"{name}: {state.sync}/{state.health} at {(state.revision or '')[:7]} {state.conditions or ''}")
        return state if done(state) else None

    return wait_for(f"Application {name}: {what}", probe, timeout=DEADLINE_S, interval=1)


def refreshed_after(kube: Kube, name: str) -> AppState:
    """Refresh, and the state of the first reconciliation that started after this call."""
    before = app_state(kube, name).reconciled_at
    time.sleep(1.1)  # reconciledAt has whole seconds: a later one is a later reconciliation
    refresh(kube, name)
    return wait_app(kube, name, "a reconciliation after the refresh", lambda s: s.reconciled_at != before)


class Recorder:
    """Every version of the objects a ``kubectl get --watch`` sees (in order), read by a thread."""

    def __init__(self, kube: Kube, *args: str) -> None:
        command = [str(kube.kubectl_bin), "--kubeconfig", str(kube.kubeconfig), "get", *args, "--watch"]
        self.versions: list[dict[str, Any]] = []
        self._proc = subprocess.Popen([*command, "-o", "json"], stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder, buffer = json.JSONDecoder(), ""
        for line in self._proc.stdout:
            buffer += line
            try:
                obj, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                continue  # not a whole object yet
            self.versions.append(obj)
            buffer = buffer.lstrip()[end:]

    def close(self) -> None:
        stop_process(self._proc, grace_s=5)
        self._thread.join(timeout=10)


def caught_up(recorder: Recorder, seen: Callable[[AppState], bool]) -> None:
    """Wait until the watch has delivered an Application version that ``seen`` accepts (the thread reads
    behind the test's own reads)."""
    wait_for(
        "the watch to deliver what the API returned",
        lambda: any(seen(AppState.of(v)) for v in recorder.versions),
        timeout=DEADLINE_S,
    )


@contextlib.contextmanager
def recording(kube: Kube, *args: str) -> Iterator[Recorder]:
    recorder = Recorder(kube, *args)
    try:
        yield recorder
    finally:
        recorder.close()


# --- the objects ----------------------------------------------------------------------------------------
def gitops_deployment(name: str, namespace: str) -> dict[str, Any]:
    """vLLM with decode scaled through its MultimodalRole (tests/e2e/conftest), every pod on kwok's fake GPU
    nodes (the frontend pinned there too), as it sits in Git: no namespace (the Application's destination
    gives it)."""
    obj = on_kwok(externally_scaled(name, namespace), namespace)
    obj["spec"]["roles"]["frontend"]["replicas"] = 1
    del obj["metadata"]["namespace"]
    return obj


def unsatisfiable(name: str, namespace: str) -> dict[str, Any]:
    """The same, asking for a GPU product no node has (as tests/e2e/operator's missing-GPU test does): its
    decode pod is unschedulable, and the operator reports Stalled."""
    obj = gitops_deployment(name, namespace)
    obj["spec"]["topology"] = {"gpuProduct": "NVIDIA-B200"}
    return obj


def ready_replicas(kube: Kube, namespace: str, deployment: str) -> int:
    obj = kube.get("deployment", deployment, namespace) or {}
    return int((obj.get("status") or {}).get("readyReplicas", 0))


def spec_managers(obj: dict[str, Any]) -> set[str]:
    """Field managers that own something under the object's spec."""
    return {
        m["manager"] for m in obj["metadata"].get("managedFields") or [] if "f:spec" in m.get("fieldsV1", {})
    }


def folded(values: list[str | None]) -> list[str | None]:
    """``values`` with consecutive repeats folded: the transitions."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


# --- the tests ------------------------------------------------------------------------------------------
def test_argocd_syncs_a_multimodal_deployment_from_git_and_judges_it_with_health_lua(
    argocd: Kube, namespace: str, tmp_path: Path
) -> None:
    repo = GitRepo(tmp_path)
    name, app_name = "gitops", f"mmd-{namespace}"
    repo.write("gitops.yaml", gitops_deployment(name, namespace))
    first = repo.commit("a MultimodalDeployment")
    app = application("multimodaldeployment.yaml", app_name, repo.url, ".", namespace)
    selector = f"metadata.name={app_name}"
    try:
        with (
            recording(argocd, "applications", "-n", ARGOCD_NS, "--field-selector", selector) as apps,
            recording(argocd, "mmdeploy", "-n", namespace) as objects,
        ):
            t0 = time.monotonic()
            argocd.apply(app)
            # 1. Argo CD syncs the commit (automated) and reports Progressing, then Healthy once every role
            # is Ready.
            wait_app(
                argocd, app_name, "Synced and Healthy at the first commit",
                lambda s: s.sync == "Synced" and s.revision == first and s.health == "Healthy",
            )  # fmt: skip
            print(f"synced and Healthy {time.monotonic() - t0:.1f} s after the Application was applied")
            live = argocd.get("mmdeploy", name, namespace)
            assert condition(live, "Ready")["status"] == "True"
            caught_up(apps, lambda s: s.health == "Healthy")
            # Progressing comes first because Argo CD judges the object right after its sync, when it has no
            # status yet (the operator writes one within a second, Ready only once its pods are).
            transitions = folded([AppState.of(v).health for v in apps.versions])
            print("Application health, as Argo CD wrote it:", transitions)
            assert "Progressing" in transitions, transitions
            assert transitions.index("Progressing") < transitions.index("Healthy"), transitions

            # 2. A commit that changes replicas is synced and stays: the operator never writes the spec.
            edited = gitops_deployment(name, namespace)
            edited["spec"]["roles"]["frontend"]["replicas"] = 2
            repo.write("gitops.yaml", edited)
            second = repo.commit("two frontends")
            refresh(argocd, app_name)
            wait_app(argocd, app_name, "Synced at the second commit", lambda s: s.revision == second)
            wait_for(
                "two frontend pods Ready",
                lambda: ready_replicas(argocd, namespace, f"{name}-frontend") == 2,
                timeout=DEADLINE_S,
            )
            wait_for(
                "the operator to report generation 2 Ready",
                lambda: (
                    (o := argocd.get("mmdeploy", name, namespace))
                    and o["status"].get("observedGeneration") == o["metadata"]["generation"]
                    and condition(o, "Ready")["status"] == "True"
                ),
                timeout=DEADLINE_S,
            )
            state = refreshed_after(argocd, app_name)
            live = argocd.json("get", "mmdeploy", name, "-n", namespace, "--show-managed-fields")
            assert live["spec"]["roles"]["frontend"]["replicas"] == 2
            assert (state.sync, state.health, state.revision) == ("Synced", "Healthy", second)
            managers = spec_managers(live)
            print("managers of the spec:", managers)
            assert managers, "no field manager owns the spec (managedFields missing?)"
            assert all(m.startswith("argocd") for m in managers), managers

            # 3. What the autoscaler owns is not Git's: /scale on the role's MultimodalRole (an HPA's or
            # KEDA's write) moves the role, and Argo CD (selfHeal on) neither calls it drift nor undoes it.
            synced_by = state.operation_started
            argocd.run("scale", "mmrole", f"{name}-decode", "-n", namespace, "--replicas=2")
            wait_for(
                "two decode pods Ready",
                lambda: ready_replicas(argocd, namespace, f"{name}-decode") == 2,
                timeout=DEADLINE_S,
            )
            state = refreshed_after(argocd, app_name)
            assert (state.sync, state.health) == ("Synced", "Healthy"), state
            assert state.operation_started == synced_by, "Argo CD synced again after the scale"
            assert ready_replicas(argocd, namespace, f"{name}-decode") == 2
            live = argocd.get("mmdeploy", name, namespace) or {}
            assert live["spec"]["roles"]["decode"]["replicas"] == 1  # Git's, the role's starting size

            # 4. A spec that cannot be satisfied: the operator's Stalled is Argo CD's Degraded.
            repo.write("nogpu.yaml", unsatisfiable("nogpu", namespace))
            third = repo.commit("a GPU product no node has")
            refresh(argocd, app_name)
            state = wait_app(
                argocd, app_name, "Degraded at the third commit",
                lambda s: s.revision == third and s.health == "Degraded",
            )  # fmt: skip
            assert state.sync == "Synced"
            assert state.resources[("MultimodalDeployment", "nogpu")][0] == "Degraded"
            assert "NVIDIA-B200" in state.resources[("MultimodalDeployment", "nogpu")][1]
            assert state.resources[("MultimodalDeployment", name)][0] == "Healthy"

            # 5. The file deleted from Git: pruned, and the Application Healthy again.
            (repo.work / "nogpu.yaml").unlink()
            fourth = repo.commit("no more nogpu")
            refresh(argocd, app_name)
            wait_app(
                argocd, app_name, "Synced and Healthy at the fourth commit",
                lambda s: s.revision == fourth and s.sync == "Synced" and s.health == "Healthy",
            )  # fmt: skip
            wait_for(
                "nogpu pruned", lambda: argocd.get("mmdeploy", "nogpu", namespace) is None, timeout=DEADLINE_S
            )
            assert argocd.get("mmdeploy", name, namespace) is not None
            caught_up(apps, lambda s: s.revision == fourth and s.health == "Healthy")
    finally:
        argocd.run("delete", "application", app_name, "-n", ARGOCD_NS, "--ignore-not-found", check=False)

    # 6. health.lua under Lua 5.1, on every version of the objects the watch saw, gives what Argo CD
    # (gopher-lua, in the controller) wrote for them: each health Argo CD reported for an object is the
    # script's on some version of that object, and the stable ones are the script's on the last version.
    by_name: dict[str, dict[str, tuple[str, str]]] = {}
    for obj in objects.versions:
        seen = by_name.setdefault(obj["metadata"]["name"], {})
        seen.setdefault(obj["metadata"]["resourceVersion"], lua51.health(HEALTH_LUA, obj))
    # (Missing is Argo CD's own word for an object in Git that is not in the cluster yet: no script runs.)
    reported = {
        (k, v)
        for state in map(AppState.of, apps.versions)
        for k, v in state.resources.items()
        if v[0] != "Missing"
    }
    print(f"{len(objects.versions)} object versions, {len(reported)} distinct healths reported by Argo CD:")
    for (_, obj_name), (status, message) in sorted(reported):
        print(f"  {obj_name}: {status}: {message}")
    for (kind, obj_name), health in sorted(reported):
        assert kind == "MultimodalDeployment"
        lua = set(by_name[obj_name].values())
        assert health in lua, f"Argo CD reported {health} for {obj_name}; Lua 5.1 gave {sorted(lua)}"
    statuses = {status for (_, (status, _)) in reported}
    assert {"Progressing", "Healthy", "Degraded"} <= statuses, statuses
    final = AppState.of(apps.versions[-1]).resources[("MultimodalDeployment", name)]
    assert final == list(by_name[name].values())[-1]


def test_argocd_renders_the_chart_from_git_as_the_example_application_installs_it(
    argocd: Kube, namespace: str, tmp_path: Path
) -> None:
    """examples/argocd/triptych-chart.yaml's source (this repository's charts/triptych, pushed to a local
    repository) rendered by Argo CD's repo server with the cluster's helm: the objects Argo CD would apply
    are exactly `helm template --include-crds` of the chart with the example's values. Never synced (no
    syncPolicy, no finalizer): the chart is installed already, by the operator fixture."""
    repo = GitRepo(tmp_path)
    shutil.copytree(CHART, repo.work / "charts" / "triptych")
    revision = repo.commit("the chart")
    app_name = f"chart-{namespace}"
    app = application("triptych-chart.yaml", app_name, repo.url, "charts/triptych", namespace)
    del app["spec"]["syncPolicy"]
    app["metadata"].pop("finalizers", None)
    source = app["spec"]["source"]
    try:
        argocd.apply(app)
        state = wait_app(
            argocd, app_name, "compared with the rendered chart",
            lambda s: s.revision == revision and s.sync in ("Synced", "OutOfSync"),
        )  # fmt: skip
        got = argocd.get("application", app_name, ARGOCD_NS) or {}
        assert got["status"]["sourceType"] == "Helm"
        errors = [c for c in got["status"].get("conditions") or [] if "Error" in c["type"]]
        assert not errors, errors
        rendered = {(r["kind"], r["name"]) for r in got["status"]["resources"]}
        values = tmp_path / "values.yaml"
        values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
        template = argocd.helm(
            "template", source["helm"]["releaseName"], str(CHART), "--namespace", namespace,
            "--include-crds", "--values", str(values),
        )  # fmt: skip
        assert template.returncode == 0, template.stderr
        expected = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(template.stdout) if o}
        print(f"Argo CD: {state.sync}, {len(rendered)} objects: {sorted(rendered)}")
        assert rendered == expected
        assert ("CustomResourceDefinition", "multimodaldeployments.triptych.dev") in rendered
        assert state.operation_started is None  # nothing was synced
    finally:
        argocd.run("delete", "application", app_name, "-n", ARGOCD_NS, "--ignore-not-found", check=False)
