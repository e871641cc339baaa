"""``hack/argocd up | down | status``: a real Argo CD on the local cluster, for the opt-in tier
(make test-argocd).

Argo CD ``ARGOCD_VERSION`` (hack/versions.env) built from its Go modules by ``hack/build-tools argocd`` (one
multi-call binary; the components are links to it by name), cached with the cluster's binaries: its
application controller, which compares each Application's source with the live objects, syncs them and
computes their health (a MultimodalDeployment's with the chart's ``health.lua``, installed through
``argocd-cm``), and its repo server, which fetches Git repositories and renders their manifests (plain YAML;
Helm charts with the cluster's ``helm``). Their shared cache is Debian's Redis, started as our own process.

How it runs, and why: as host processes, like KEDA's (hack/keda), not as pods, for the same reasons (no image
to build around the binaries); Argo CD's own local development runs them the same way (its Procfile), with
``ARGOCD_FAKE_IN_CLUSTER=true``, which makes the ``in-cluster`` destination (https://kubernetes.default.svc)
the kubeconfig's cluster.
- Argo CD's CRDs, the controller's ServiceAccount and RBAC, and its ConfigMaps and Secret (``argocd-cm``,
  ``argocd-rbac-cm``, ``argocd-cmd-params-cm``, ``argocd-secret``) come from the release's own
  ``manifests/install.yaml``, in the ``argocd`` namespace; ours are only the data of ``argocd-cm`` (the
  health check) and of ``argocd-cmd-params-cm``.
- Each process gets its settings from ``argocd-cmd-params-cm`` and the Redis password from the
  ``argocd-redis`` Secret through the environment variables the release's own Deployment/StatefulSet maps
  them to, so the ConfigMap is the configuration, as in a cluster; flags only where there is no key (ports).
- The controller authenticates as ``argocd/argocd-application-controller`` (a kubeconfig with a token of it,
  whose context namespace, ``argocd``, is where it looks for Applications): it may do what the release's RBAC
  lets it. The repo server needs no API access (the release gives its ServiceAccount no role) and gets no
  kubeconfig.
- Listeners: Redis (with a password, as the release's init job makes one), the repo server's gRPC (TLS with
  the self-signed certificate it makes for itself, which the controller does not verify: the release's
  defaults) and its metrics and /healthz on loopback. The controller's metrics and /healthz bind every
  address (v3.6 has no flag for it: ``0.0.0.0:PORT``), so that port is fenced to loopback and the bridge
  (network.fence_inbound), as KEDA's metrics server's is.
- Left out: the API server and UI (argocd-server), Dex, the ApplicationSet and notifications controllers, and
  the commit server (the hydrator is off); Git commit signature checks (GnuPG) are off. Without argocd-server
  nothing creates the ``default`` AppProject, so ``up`` applies it as that server would (every source, every
  destination, every cluster-scoped kind).
- A bare Git repository, ``gitops.git`` in this tier's folder, for trying examples/argocd by hand (its
  ``file://`` URL is in ``status``); the tests make their own.

``down`` stops the processes by the PIDs ``up`` recorded and removes the port's fence; the CRDs, the
``argocd`` namespace and the Applications in it stay (inert without a controller: nothing is pruned).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from localcluster import network
from localcluster.cluster import Cluster
from localcluster.config import (
    ARGOCD_COMPONENTS,
    REPO,
    Paths,
    PortsFile,
    Settings,
    cache_dir,
    free_port,
)
from localcluster.procs import ClusterError, read_pid, start_ready, stop_component, tier_main
from localcluster.tools import build_binaries, ensure_packages, module_source

NAMESPACE = "argocd"
CONTROLLER, REPO_SERVER, REDIS = ARGOCD_COMPONENTS
MODULE = "github.com/argoproj/argo-cd/v3"
# What the tier needs from Debian: Argo CD's cache; git, which the repo server runs; and the Lua 5.1 that the
# tier's test runs the health check under to compare with what Argo CD reports.
PACKAGES = {"redis-server": "/usr/bin/redis-server", "git": "/usr/bin/git", "lua5.1": "/usr/bin/lua5.1"}
HEALTH_LUA = REPO / "charts" / "triptych" / "argocd" / "health.lua"
# Argo CD's key for a custom health check: resource.customizations.health.<group>_<kind>
# (docs/operator-manual/health.md of the release).
HEALTH_KEY = "resource.customizations.health.triptych.dev_MultimodalDeployment"
# The release's objects applied as they are (with the namespace set): the CRDs, these ConfigMaps and Secret,
# and the ServiceAccount and RBAC of the controller.
CONFIG_OBJECTS = frozenset(
    {("ConfigMap", "argocd-cm"), ("ConfigMap", "argocd-rbac-cm"), ("ConfigMap", "argocd-cmd-params-cm"),
     ("Secret", "argocd-secret")}
)  # fmt: skip
RBAC_KINDS = frozenset({"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})
# What the release's image copies from its hack/ into /usr/local/bin besides the binaries (Dockerfile).
RELEASE_SCRIPTS = ("git-verify-wrapper.sh", "gpg-wrapper.sh")
REDIS_SECRET = "argocd-redis"  # the release's name for the Secret with Redis's password (key "auth")
TOKEN_DURATION = "720h"
# The shard this controller is: the release runs it as StatefulSet pod -0, and Argo CD reads the ordinal from
# the host name.
CONTROLLER_HOSTNAME = f"{CONTROLLER}-0"


def log(msg: str) -> None:
    print(f"argocd: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Ports(PortsFile):
    """Chosen once per ``up`` (free at that moment) and kept in ``paths.argocd/ports.json``."""

    redis: int  # loopback
    repo_server: int  # loopback: gRPC (TLS), for the controller
    repo_server_metrics: int  # loopback: /metrics and /healthz
    # The controller's /metrics and /healthz: every address (no flag for it), fenced to this machine.
    controller_metrics: int

    @classmethod
    def pick(cls, apiserver_port: int) -> Ports:
        """Four distinct free ports, never the API server's (free on loopback, but network.py's DNAT sends
        loopback connections to it on to the bridge address)."""
        taken = [apiserver_port]
        for host in ("127.0.0.1", "127.0.0.1", "127.0.0.1", "0.0.0.0"):
            taken.append(free_port(host, exclude=taken))
        return cls(*taken[1:])


# --- pure builders ----------------------------------------------------------------------------------------
def cmd_params(ports: Ports) -> dict[str, str]:
    """``argocd-cmd-params-cm``'s data: where each process listens and finds the other two."""
    return {
        "redis.server": f"127.0.0.1:{ports.redis}",
        "repo.server": f"127.0.0.1:{ports.repo_server}",
        "reposerver.listen.address": "127.0.0.1",
        # (The release maps this key to ARGOCD_REPO_SERVER_LISTEN_METRICS_ADDRESS, but v3.6's repo server
        # reads ARGOCD_REPO_SERVER_METRICS_LISTEN_ADDRESS: kept for a reader, and repo_server_command passes
        # the address as a flag, which does take effect.)
        "reposerver.metrics.listen.address": "127.0.0.1",
        # Each resource's health in the Application's status.resources (off by default since v3, when only
        # argocd-server's resource tree has it, and we run no argocd-server): what the tier's test reads to
        # compare with health.lua run by Lua 5.1.
        "controller.resource.health.persist": "true",
        "controller.log.format": "text",
        "reposerver.log.format": "text",
        "hydrator.enabled": "false",
    }


def argocd_cm_data(health_lua: str) -> dict[str, str]:
    """``argocd-cm``'s data: the chart's health check for MultimodalDeployments, as README tells users."""
    return {HEALTH_KEY: health_lua}


def release_objects(install: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``up`` applies of the release's install.yaml: its CRDs, the controller's ServiceAccount and RBAC,
    and the ConfigMaps and Secret in CONFIG_OBJECTS, namespaced objects in ``argocd``."""
    chosen = []
    for obj in install:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if (
            kind == "CustomResourceDefinition"
            or (kind in RBAC_KINDS and name == CONTROLLER)
            or (kind, name) in CONFIG_OBJECTS
        ):
            cluster_scoped = kind in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding")
            meta = obj["metadata"] if cluster_scoped else {**obj["metadata"], "namespace": NAMESPACE}
            chosen.append({**obj, "metadata": meta})
    return chosen


def configured(
    objects: Iterable[dict[str, Any]], data: Mapping[str, Mapping[str, str]]
) -> list[dict[str, Any]]:
    """``objects`` with the ConfigMaps named in ``data`` given that data (the release ships them empty)."""
    return [
        {**obj, "data": dict(data[obj["metadata"]["name"]])}
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] in data
        else obj
        for obj in objects
    ]


def workload_env(
    install: Iterable[dict[str, Any]], workload: str, values: Mapping[tuple[str, str], Mapping[str, str]]
) -> dict[str, str]:
    """The environment the release's Deployment/StatefulSet ``workload`` gives its container: plain values as
    they are, and each ``configMapKeyRef``/``secretKeyRef`` resolved from ``values`` ((kind, name) -> data)
    when that key is set there (an unset optional key is no variable, as in a pod)."""
    (spec,) = [
        o["spec"]["template"]["spec"]
        for o in install
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["name"] == workload
    ]
    env: dict[str, str] = {}
    for var in spec["containers"][0].get("env") or []:
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        source = var.get("valueFrom") or {}
        for kind, ref_key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(ref_key)
            if ref is not None and ref["key"] in values.get((kind, ref["name"]), {}):
                env[var["name"]] = values[(kind, ref["name"])][ref["key"]]
    return env


def default_project() -> dict[str, Any]:
    """The AppProject ``default``, as argocd-server creates it at start (server.go's
    initializeDefaultProject)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"server": "*", "namespace": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
        },
    }


def redis_secret(password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": REDIS_SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"auth": password},
    }


def redis_config(port: int, password: str, data_dir: Path) -> str:
    """Loopback only, a password, nothing written to disk (a cache: Argo CD rebuilds what it loses)."""
    return "\n".join(
        [
            "bind 127.0.0.1",
            f"port {port}",
            "protected-mode yes",
            f"requirepass {password}",
            'save ""',
            "appendonly no",
            f"dir {data_dir}",
            "daemonize no",
            'logfile ""',
            "",
        ]
    )


def repo_server_command(binary: Path, ports: Ports) -> list[str]:
    return [
        str(binary),
        f"--port={ports.repo_server}",
        "--metrics-address=127.0.0.1",  # see cmd_params: the ConfigMap's key does not reach this one
        f"--metrics-port={ports.repo_server_metrics}",
    ]


def controller_command(binary: Path, ports: Ports) -> list[str]:
    return [str(binary), f"--metrics-port={ports.controller_metrics}"]


# --- steps --------------------------------------------------------------------------------------------------
class ArgoCD:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.paths: Paths = cluster.paths
        self.dir = self.paths.argocd
        self.kubeconfig = self.dir / "kubeconfig"
        self.ports_file = self.dir / "ports.json"
        self.config = self.dir / "config"  # ARGOCD_APP_CONF_PATH: what the release mounts under /app/config
        self.gitops = self.dir / "gitops.git"

    def running(self) -> dict[str, int | None]:
        return {c: read_pid(self.paths.pidfile(c)) for c in ARGOCD_COMPONENTS}

    def healthy(self, ports: Ports) -> dict[str, bool]:
        return {
            CONTROLLER: _healthz(ports.controller_metrics),
            REPO_SERVER: _healthz(ports.repo_server_metrics),
            REDIS: _redis_ping(ports.redis, self.redis_password()),
        }

    def redis_password(self) -> str:
        path = self.dir / "redis-password"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def release_source(self) -> Path:
        """The release's module source (the build downloaded it): its install manifests and the scripts its
        image ships."""
        versions = self.cluster.versions
        return module_source(MODULE, versions["ARGOCD_VERSION"], versions["ARGOCD_GO"])

    def install(self, source: Path) -> list[dict[str, Any]]:
        return self.cluster.objects(
            (source / "manifests" / "install.yaml").read_text(), "Argo CD's install.yaml to JSON"
        )

    def apply_settings(self, install: list[dict[str, Any]], ports: Ports) -> dict[str, str]:
        """The namespace, the release's CRDs, RBAC and settings with our data, the Redis Secret and the
        default AppProject (server-side apply: idempotent). Returns argocd-cmd-params-cm's data."""
        params = cmd_params(ports)
        data = {"argocd-cm": argocd_cm_data(HEALTH_LUA.read_text()), "argocd-cmd-params-cm": params}
        namespace: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        objects = configured(release_objects(install), data)
        secret = redis_secret(self.redis_password())
        self.cluster.apply([namespace, *objects, secret], "Argo CD's CRDs, RBAC and settings")
        crds = [o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"]
        self.cluster.wait_established(crds, "Argo CD's CRDs established")
        self.cluster.apply([default_project()], "the default AppProject")
        return params

    def install_scripts(self, source: Path) -> Path:
        """The helper scripts the release's image puts in /usr/local/bin (its Dockerfile), into a folder of
        ours for the repo server's PATH: v3.6's repo server runs git-verify-wrapper.sh on every revision it
        renders (a deprecated signature check, whatever ARGOCD_GPG_ENABLED says), and fails the manifest
        request with "permission denied" when it is missing."""
        folder = self.dir / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        for script in RELEASE_SCRIPTS:
            target = folder / script
            target.unlink(missing_ok=True)
            target.write_bytes((source / "hack" / script).read_bytes())
            target.chmod(0o755)
        return folder

    def up(self) -> None:
        t0 = time.monotonic()
        if not self.cluster.control_plane_up():
            raise ClusterError("the local cluster is not up (hack/cluster up)")
        ports_now = Ports.load(self.ports_file) if self.ports_file.exists() else None
        if ports_now is not None and all(self.running().values()) and all(self.healthy(ports_now).values()):
            # The settings again (the chart's health.lua may have changed): the controller watches them.
            self.apply_settings(self.install(self.release_source()), ports_now)
            log("already up; its settings applied again")
            return
        self.stop_processes()  # what is left of an earlier `up`
        ensure_packages(PACKAGES)
        tools = build_binaries("argocd")
        bins = tools["argocd"]
        t_build = time.monotonic() - t0
        for folder in ("home", "tmp", "redis", "helm", "kubecache", "run", "plugins"):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("tls", "ssh", "gpg/source", "gpg/keys", "reposerver/tls", "reposerver/mtls"):
            (self.config / folder).mkdir(parents=True, exist_ok=True)

        source = self.release_source()
        install = self.install(source)
        scripts = self.install_scripts(source)
        ports = Ports.pick(Settings.load(self.paths.settings).apiserver_port)
        ports.save(self.ports_file)
        password = self.redis_password()
        params = self.apply_settings(install, ports)
        self.cluster.service_account_kubeconfig(
            NAMESPACE, CONTROLLER, self.kubeconfig, duration=TOKEN_DURATION, context_namespace=NAMESPACE
        )
        if not (self.gitops / "HEAD").exists():
            subprocess.run(
                ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(self.gitops)], check=True
            )

        values = {("ConfigMap", "argocd-cmd-params-cm"): params, ("Secret", REDIS_SECRET): {"auth": password}}
        conf = self.dir / "redis.conf"
        conf.write_text(redis_config(ports.redis, password, self.dir / "redis"))
        conf.chmod(0o600)
        start_ready(
            self.paths, REDIS, ["/usr/bin/redis-server", str(conf)],
            lambda: _redis_ping(ports.redis, password), deadline_s=30, env=self.base_env(),
        )  # fmt: skip

        env = {
            **self.base_env(),
            **workload_env(install, REPO_SERVER, values),
            # The cluster's helm renders Helm sources; git comes from Debian and calls `argocd` (by name, as
            # GIT_ASKPASS) for a repository's credentials; the release's scripts (install_scripts).
            "PATH": f"{tools['helm']}:{bins}:{scripts}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            # Its credential socket and the plugins' sockets, which would be /tmp/reposerver-ask-pass.sock
            # and /home/argocd/cmp-server/plugins, in our folder.
            "ARGOCD_ASK_PASS_SOCK": str(self.dir / "run" / "reposerver-ask-pass.sock"),
            "ARGOCD_PLUGINSOCKFILEPATH": str(self.dir / "plugins"),
            "HELM_CACHE_HOME": str(self.dir / "helm"),
            "HELM_CONFIG_HOME": str(self.dir / "helm"),
            "HELM_DATA_HOME": str(self.dir / "helm"),
            "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_TLS_DATA_PATH": str(self.config / "tls"),
            "ARGOCD_SSH_DATA_PATH": str(self.config / "ssh"),
            "ARGOCD_GPG_DATA_PATH": str(self.config / "gpg/source"),
            "ARGOCD_GNUPGHOME": str(self.config / "gpg/keys"),
        }
        start_ready(
            self.paths, REPO_SERVER, repo_server_command(bins / REPO_SERVER, ports),
            lambda: _healthz(ports.repo_server_metrics), deadline_s=90, env=env,
        )  # fmt: skip

        network.fence_inbound(ports.controller_metrics)
        env = {
            **self.base_env(),
            **workload_env(install, CONTROLLER, values),
            "KUBECONFIG": str(self.kubeconfig),
            "ARGOCD_FAKE_IN_CLUSTER": "true",
            "HOSTNAME": CONTROLLER_HOSTNAME,
            "KUBECACHEDIR": str(self.dir / "kubecache"),
        }
        start_ready(
            self.paths, CONTROLLER, controller_command(bins / CONTROLLER, ports),
            lambda: _healthz(ports.controller_metrics), deadline_s=90, env=env,
        )  # fmt: skip
        log(
            f"up: binaries {t_build:.1f} s, total {time.monotonic() - t0:.1f} s; logs in {self.paths.logs}; "
            f"a bare repository to try examples/argocd with: file://{self.gitops}"
        )

    def base_env(self) -> dict[str, str]:
        """What every process gets, and nothing of this shell's (no proxy settings): its own home and
        temporary folder (the repo server clones there), and the folder the release mounts as /app/config."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.dir / "home"),
            "TMPDIR": str(self.dir / "tmp"),
            "ARGOCD_APP_CONF_PATH": str(self.config),
        }

    def stop_processes(self) -> None:
        # The controller first: it is the client of the other two.
        for component in ARGOCD_COMPONENTS:
            stop_component(self.paths, component)

    def down(self) -> None:
        t0 = time.monotonic()
        self.stop_processes()
        if self.ports_file.exists():
            network.unfence_inbound(Ports.load(self.ports_file).controller_metrics)
        log(
            f"down in {time.monotonic() - t0:.1f} s (CRDs, the argocd namespace and its Applications stay, "
            "inert without a controller)"
        )

    def status(self) -> int:
        pids = self.running()
        ports = Ports.load(self.ports_file) if self.ports_file.exists() else None
        healthy = self.healthy(ports) if ports is not None else dict.fromkeys(ARGOCD_COMPONENTS, False)
        ok = all(pids.values()) and all(healthy.values())
        print(f"argocd: {'up' if ok else 'down' if not any(pids.values()) else 'degraded'}")
        for component, pid in pids.items():
            state = f"running (pid {pid}), {'healthy' if healthy[component] else 'not healthy'}"
            print(f"  {component}: {state if pid else 'not running'}")
        if ports is not None:
            print(f"  ports: {json.dumps(asdict(ports))}")
        if (self.gitops / "HEAD").exists():
            print(f"  bare repository for examples/argocd: file://{self.gitops}")
        return 0 if ok else 1


def _healthz(port: int) -> bool:
    """Whether a process's /healthz on loopback answers 200 (the controller's and the repo server's check
    what they depend on: the repo server its own gRPC service)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def _redis_ping(port: int, password: str) -> bool:
    """AUTH then PING in Redis's protocol; True on +OK and +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            got = b""
            while got.count(b"\r\n") < 2:
                chunk = conn.recv(256)
                if not chunk:
                    break
                got += chunk
    except OSError:
        return False
    return got == b"+OK\r\n+PONG\r\n"


def main(argv: list[str] | None = None) -> int:
    argocd = ArgoCD(Cluster(Paths(cache_dir())))
    commands = {
        "up": (
            "build Argo CD (once) and start its controller, repo server and Redis on the running cluster; "
            "a no-op when it is up",
            argocd.up,
        ),
        "down": ("stop its processes (CRDs, the argocd namespace and its Applications stay)", argocd.down),
        "status": ("its processes, their health and ports", argocd.status),
    }
    return tier_main("hack/argocd", __doc__, commands, argv)
