"""``hack/cluster up | down | status | kubeconfig``: the local Kubernetes cluster.

Control plane: kwokctl's binary runtime running our own builds (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok-controller). One real node: containerd + runc + CNI bridge + kubelet + kube-proxy, with
CoreDNS as a host process. Fake GPU nodes: Node objects that kwok keeps Ready.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from localcluster import configs, network, pki
from localcluster.config import (
    ARGOCD_COMPONENTS,
    BRIDGE_IP,
    CLUSTER_NAME,
    COREDNS_READY_PORT,
    KEDA_COMPONENTS,
    KUBE_PROXY_HEALTHZ_PORT,
    KUBELET_HEALTHZ_PORT,
    NODE_KIND_LABEL,
    REAL_NODE,
    Paths,
    Settings,
    cache_dir,
    free_port,
    read_versions,
)
from localcluster.procs import (
    ClusterError,
    pids_with_cmdline,
    read_pid,
    report_failures,
    run,
    start_daemon,
    stop_component,
    stop_pid,
    tail,
    wait_until,
)
from localcluster.tools import build_binaries, ensure_packages

NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "coredns")


# Below this much free disk `up` warns: importing the worker image (~5 GB) takes twice its size, plus room.
LOW_DISK_BYTES = 15 * 1024**3


def log(msg: str) -> None:
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


class Cluster:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.versions = read_versions()
        self._bins: dict[str, Path] | None = None

    # --- helpers -------------------------------------------------------------------------------------
    @property
    def bins(self) -> dict[str, Path]:
        if self._bins is None:
            self._bins = build_binaries()
        return self._bins

    def kwokctl(self, *args: str, what: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "KWOK_WORKDIR": str(self.paths.kwok_workdir),
            "KWOK_KUBE_VERSION": self.versions["K8S_VERSION"],
        }
        return run(
            [self.bins["kwok"] / "kwokctl", "--name", CLUSTER_NAME, *args],
            what=what,
            env=env,
            timeout=timeout,
            log=self.paths.logfile("kwokctl"),
        )

    def kubectl(
        self,
        *args: str,
        what: str = "kubectl",
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bins["kubernetes"] / "kubectl"), "--kubeconfig", str(self.paths.kubeconfig), *args]
        if stdin is None:
            return run(cmd, what=what, check=check, timeout=timeout)
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(f"{what}: {proc.stderr.strip()}")
        return proc

    def apply(self, objects: list[dict[str, object]], what: str) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": objects}
        self.kubectl(
            "apply",
            "--server-side",
            "--field-manager",
            "triptych-hack",
            "-f",
            "-",
            what=what,
            stdin=json.dumps(doc),
        )

    def objects(self, manifest: str, what: str) -> list[dict[str, Any]]:
        """The objects of a YAML manifest (a release's install, say) as JSON, through kubectl's client-side
        dry run: hack/ uses no YAML library."""
        as_json = self.kubectl(
            "create", "--dry-run=client", "-o", "json", "-f", "-", what=what, stdin=manifest
        )
        return json_stream(as_json.stdout)

    def wait_established(self, crds: list[str], what: str, deadline_s: float = 60) -> None:
        """Until every CRD named is Established. (Not `kubectl wait`: on a CRD created a moment before, whose
        status has no conditions yet, kubectl 1.35 fails at once with ".status.conditions accessor error"
        instead of waiting; seen with Argo CD's.)"""

        def established() -> bool:
            got = self.kubectl("get", "crd", *crds, "-o", "json", check=False, timeout=15)
            items = json_stream(got.stdout) if got.returncode == 0 else []
            return len(items) == len(crds) and all(
                any(c["type"] == "Established" and c["status"] == "True" for c in conditions(i))
                for i in items
            )

        wait_until(what, established, deadline_s=deadline_s, paths=self.paths, interval=0.5)

    def service_account_kubeconfig(
        self, namespace: str, account: str, path: Path, *, duration: str, context_namespace: str | None = None
    ) -> None:
        """Write a kubeconfig (0600) that authenticates as ServiceAccount ``namespace/account`` with a token
        of it lasting ``duration``, for a tier's host process: it may do what that account's RBAC allows."""
        token = self.kubectl(
            "create", "token", account, "-n", namespace, "--duration", duration,
            what=f"token for {namespace}/{account}",
        ).stdout.strip()  # fmt: skip
        view = self.kubectl("config", "view", "--raw", "--minify", "-o", "json", what="kubeconfig")
        config = kubeconfig_for_token(json.loads(view.stdout), token, account, context_namespace)
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def api_ready(self) -> bool:
        return self.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0

    def running_components(self) -> dict[str, int | None]:
        return {c: read_pid(self.paths.pidfile(c)) for c in NODE_COMPONENTS}

    @property
    def up_complete(self) -> Path:
        """Written as the last step of ``up``: a cluster without it was interrupted and is torn down first."""
        return self.paths.state / "up-complete"

    def control_plane_up(self) -> bool:
        return self.paths.kubeconfig.exists() and self.api_ready()

    # --- up ------------------------------------------------------------------------------------------
    def up(self, gpu_nodes: int) -> None:
        if self.up_complete.exists() and self.control_plane_up() and all(self.running_components().values()):
            log(f"already up (kubeconfig: {self.paths.kubeconfig}); nothing to do")
            return
        if self.paths.settings.exists():
            log("a previous cluster is partly running: tearing it down first")
            self.down()
        t0 = time.monotonic()
        ensure_packages()
        bins = self.bins
        t_build = time.monotonic() - t0
        self.preflight()
        for d in (
            self.paths.state,
            self.paths.logs,
            self.paths.run,
            self.paths.cni_conf_dir,
            self.paths.kubelet_root,
            self.paths.containerd_root,
        ):
            d.mkdir(parents=True, exist_ok=True)
        settings = Settings(
            apiserver_port=free_port(),
            gpu_nodes=gpu_nodes,
            ip_forward_before=network.sysctl_get("net/ipv4/ip_forward"),
        )
        settings.save(self.paths.settings)
        t1 = time.monotonic()
        network.setup(settings.apiserver_port)

        # Control plane.
        pki.front_proxy(self.paths.front_proxy_pki)
        cfg = self.paths.state / "kwokctl.yaml"
        cfg.write_text(
            configs.kwokctl_config(
                self.paths,
                bins,
                kube_version=self.versions["K8S_VERSION"],
                apiserver_port=settings.apiserver_port,
                stages=kwok_stages(self.versions["KWOK_VERSION"]),
            )
        )
        self.kwokctl(
            "create",
            "cluster",
            "--config",
            str(cfg),
            "--kubeconfig",
            str(self.paths.kubeconfig),
            "--wait",
            "120s",
            what="control plane (kwokctl create cluster)",
        )
        wait_until("kube-apiserver", self.api_ready, deadline_s=60, paths=self.paths)
        t_cp = time.monotonic() - t1

        # The real node.
        self.start_containerd()
        from localcluster.images import import_built_images  # noqa: PLC0415 - avoids an import cycle

        import_built_images(self.paths, required=("pause",))
        self.start_kubelet()
        self.start_kube_proxy()
        self.start_coredns()
        self.apply(configs.dns_objects(), "kube-dns Service")
        self.apply([configs.gpu_node(i) for i in range(gpu_nodes)], "kwok GPU nodes")
        try:
            wait_until("nodes", lambda: self.nodes_ready(1 + gpu_nodes), deadline_s=90, paths=self.paths)
        except ClusterError as exc:
            # The fake nodes are kwok's: its controller's log says why they are not Ready.
            raise ClusterError(str(exc), self.paths.kwok_cluster / "logs" / "kwok-controller.log") from None
        wait_until("service account", self.default_sa_exists, deadline_s=60, paths=self.paths)
        self.up_complete.touch()
        log(
            f"up: binaries {t_build:.1f} s, control plane {t_cp:.1f} s, "
            f"all nodes Ready {time.monotonic() - t1:.1f} s after start (total {time.monotonic() - t0:.1f} s)"
        )
        log(f"kubeconfig: {self.paths.kubeconfig}")

    def preflight(self) -> None:
        missing = [b for b in ("containerd", "runc", "iptables", "ip", "ctr") if shutil.which(b) is None]
        if not Path("/usr/lib/cni/bridge").exists():
            missing.append("/usr/lib/cni/bridge (containernetworking-plugins)")
        if missing:
            raise ClusterError(f"preflight: missing {', '.join(missing)}")
        if not Path("/proc/sys/net/bridge").exists():
            run(["modprobe", "br_netfilter"], what="preflight: load br_netfilter")
        free = shutil.disk_usage(self.paths.cache).free
        if free < LOW_DISK_BYTES:
            # The kubelet here never evicts or deletes images on disk pressure (nothing could pull them back),
            # so a full disk shows up as pods failing to write: say so now rather than then.
            log(
                f"warning: only {free / 1024**3:.1f} GiB free under {self.paths.cache}; the worker image "
                f"alone needs ~{LOW_DISK_BYTES // 1024**3} GiB to import"
            )
        import socket  # noqa: PLC0415

        for host, port, who in (
            ("127.0.0.1", KUBELET_HEALTHZ_PORT, "kubelet healthz"),
            ("127.0.0.1", KUBE_PROXY_HEALTHZ_PORT, "kube-proxy healthz"),
            ("127.0.0.1", COREDNS_READY_PORT, "coredns ready"),
        ):
            with socket.socket() as s:
                # As the components themselves do: a port whose only users are closed connections of our
                # earlier probes (TIME_WAIT) is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((host, port))
                except OSError as exc:
                    raise ClusterError(f"preflight: port {host}:{port} ({who}) is in use: {exc}") from exc

    def start_containerd(self) -> None:
        cfg = self.paths.state / "containerd.toml"
        cfg.write_text(configs.containerd_config(self.paths))
        (self.paths.cni_conf_dir / "10-triptych.conflist").write_text(configs.cni_conflist(self.paths))
        pid = start_daemon(self.paths, "containerd", ["containerd", "--config", cfg])
        sock = self.paths.containerd_socket
        wait_until(
            "containerd",
            lambda: sock.exists() and self.ctr("version", check=False).returncode == 0,
            deadline_s=30,
            paths=self.paths,
            pid=pid,
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(
            ["ctr", "--address", str(self.paths.containerd_socket), "--namespace", "k8s.io", *args],
            what="ctr",
            check=check,
            timeout=timeout,
        )

    def start_kubelet(self) -> None:
        cfg = self.paths.state / "kubelet.json"
        cfg.write_text(configs.kubelet_config(self.paths))
        (self.paths.state / "resolv.conf").write_text("# triptych: pods resolve cluster names only\n")
        kubeconfig = self.paths.kwok_cluster / "kubeconfig.yaml"
        pid = start_daemon(
            self.paths,
            "kubelet",
            [
                self.bins["kubernetes"] / "kubelet",
                "--config",
                cfg,
                "--kubeconfig",
                kubeconfig,
                "--root-dir",
                self.paths.kubelet_root,
                "--cert-dir",
                self.paths.kubelet_root / "pki",
                "--hostname-override",
                REAL_NODE,
                "--node-ip",
                BRIDGE_IP,
                "--node-labels",
                f"{NODE_KIND_LABEL}=real",
                "--v",
                "1",
            ],
        )
        wait_until(
            "kubelet",
            lambda: _http_ok(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz"),
            deadline_s=60,
            paths=self.paths,
            pid=pid,
        )

    def start_kube_proxy(self) -> None:
        kubeconfig = self.paths.kwok_cluster / "kubeconfig.yaml"
        cfg = self.paths.state / "kube-proxy.json"
        cfg.write_text(configs.kube_proxy_config(kubeconfig))
        pid = start_daemon(
            self.paths, "kube-proxy", [self.bins["kubernetes"] / "kube-proxy", "--config", cfg]
        )
        wait_until(
            "kube-proxy",
            lambda: _http_ok(f"http://127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}/healthz"),
            deadline_s=60,
            paths=self.paths,
            pid=pid,
        )

    def start_coredns(self) -> None:
        kubeconfig = self.paths.kwok_cluster / "kubeconfig.yaml"
        cfg = self.paths.state / "Corefile"
        cfg.write_text(configs.corefile(kubeconfig))
        pid = start_daemon(self.paths, "coredns", [self.bins["coredns"] / "coredns", "-conf", cfg])
        wait_until(
            "coredns",
            lambda: _http_ok(f"http://127.0.0.1:{COREDNS_READY_PORT}/ready"),
            deadline_s=60,
            paths=self.paths,
            pid=pid,
        )

    def nodes_ready(self, expected: int) -> bool:
        out = self.kubectl("get", "nodes", "-o", "json", check=False, timeout=15)
        if out.returncode != 0:
            return False
        nodes = json.loads(out.stdout)["items"]
        ready = [
            n
            for n in nodes
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
        ]
        return len(ready) >= expected

    def default_sa_exists(self) -> bool:
        return (
            self.kubectl(
                "get", "serviceaccount", "default", "-n", "default", check=False, timeout=10
            ).returncode
            == 0
        )

    def restart_apiserver(self, down_s: float = 0.0) -> None:
        """Stop kube-apiserver and start it again with the same command line, environment, working folder
        and log: what an API server upgrade or crash looks like to its clients (the operator, the kubelet,
        kwok). etcd and the other components keep running. (Not `kwokctl stop/start cluster`: that restarts
        kwok too, whose new identity then waits out its predecessor's node leases, 200 s, before fake pods
        run again.) ``down_s``: how long it stays stopped before it starts again, an outage."""
        pidfile = self.paths.kwok_cluster / "pids" / "kube-apiserver.pid"
        pid = read_pid(pidfile)
        if pid is None or not self.api_ready():
            raise ClusterError("kube-apiserver is not running (hack/cluster up)")
        proc = Path(f"/proc/{pid}")
        argv = [arg.decode() for arg in (proc / "cmdline").read_bytes().split(b"\0") if arg]
        env = dict(
            item.split("=", 1) for item in (proc / "environ").read_bytes().decode().split("\0") if "=" in item
        )
        cwd = os.readlink(proc / "cwd")
        logfile = os.readlink(proc / "fd" / "1")
        t0 = time.monotonic()
        # A short grace, then SIGKILL: on SIGTERM the API server waits out open requests (tens of seconds
        # with watches open), and a crash is the case its clients must survive anyway.
        stop_pid(pid, grace_s=3)
        time.sleep(down_s)
        stopped = time.monotonic()
        with open(logfile, "ab") as out, open(os.devnull, "rb") as devnull:
            restarted = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=devnull,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pidfile.write_text(str(restarted.pid))  # kwokctl stops it by this file (`down`)
        wait_until("kube-apiserver", self.api_ready, deadline_s=60, paths=self.paths)
        log(
            f"kube-apiserver restarted (pid {pid} -> {restarted.pid}): down {stopped - t0:.1f} s, "
            f"ready again {time.monotonic() - stopped:.1f} s after start"
        )

    # --- down ----------------------------------------------------------------------------------------
    def down(self) -> None:
        t0 = time.monotonic()
        settings = Settings.load(self.paths.settings) if self.paths.settings.exists() else None
        kubelet_running = read_pid(self.paths.pidfile("kubelet")) is not None
        if kubelet_running and self.paths.kubeconfig.exists() and self.api_ready():
            # Pods first, through the API, so the kubelet stops them and CNI releases their network.
            # Cordon first: pods of Deployments would otherwise be replaced on this node as fast as they go.
            self.kubectl("cordon", REAL_NODE, check=False, timeout=30)
            # (kubectl refuses --all together with --field-selector: the selector alone picks every pod.)
            self.kubectl(
                "delete",
                "pods",
                "--all-namespaces",
                "--field-selector",
                f"spec.nodeName={REAL_NODE}",
                "--wait=true",
                "--timeout=60s",
                "--grace-period=5",
                check=False,
                timeout=90,
            )
            # The API forgets a pod once its containers stopped; the kubelet stops its sandbox (and the CNI
            # plugin releases its network) a moment later. Give it that moment before stopping the kubelet.
            try:
                wait_until("pod sandboxes to stop", self.no_running_tasks, deadline_s=30, paths=self.paths)
            except ClusterError as exc:
                log(f"{exc}; removing what is left by force")
        # The tiers' host processes, if `hack/keda up` or `hack/argocd up` started them, then the node's own.
        for component in (*KEDA_COMPONENTS, *ARGOCD_COMPONENTS, "coredns", "kube-proxy", "kubelet"):
            stop_component(self.paths, component)
        if self.paths.containerd_socket.exists() and read_pid(self.paths.pidfile("containerd")):
            self.remove_all_containers()
        stop_component(self.paths, "containerd")
        # containerd's shims re-parent to init; they carry our socket path in their command line.
        for pid in pids_with_cmdline(str(self.paths.containerd_socket)):
            stop_pid(pid, grace_s=5)
        if "kubernetes" in self._known_bins():
            run(
                [self.bins["kubernetes"] / "kube-proxy", "--cleanup"],
                what="kube-proxy --cleanup",
                check=False,
            )
        if self.paths.kwok_cluster.exists():
            self.kwokctl("delete", "cluster", what="control plane (kwokctl delete cluster)", timeout=120)
        self.unmount_under(self.paths.state)
        removed = network.teardown(settings.ip_forward_before if settings else None)
        keep_logs = self.paths.cache / "last-cluster-logs"
        if self.paths.logs.exists():
            shutil.rmtree(keep_logs, ignore_errors=True)
            shutil.copytree(self.paths.logs, keep_logs)
        shutil.rmtree(self.paths.state, ignore_errors=True)
        if removed:
            log(f"network cleaned: {', '.join(removed)}")
        log(f"down in {time.monotonic() - t0:.1f} s (logs kept in {keep_logs})")

    def _known_bins(self) -> dict[str, Path]:
        try:
            return self.bins
        except ClusterError:
            return {}

    def no_running_tasks(self) -> bool:
        return not self.ctr("tasks", "list", "-q", check=False).stdout.split()

    def remove_all_containers(self) -> None:
        tasks = self.ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
        for task in tasks:
            self.ctr("tasks", "delete", "-f", task, check=False)
        containers = self.ctr("containers", "list", "-q", check=False).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, check=False)

    @staticmethod
    def unmount_under(root: Path) -> None:
        """Unmount what the kubelet and containerd mounted under our state (secret tmpfs, rootfs overlays)."""
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        targets = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
        for target in sorted(targets, key=len, reverse=True):
            run(["umount", "-l", target], what=f"umount {target}", check=False)

    # --- status --------------------------------------------------------------------------------------
    def status(self) -> int:
        if not self.paths.settings.exists():
            print("cluster: down")
            leftover = network.leftovers()
            if leftover:
                print(f"  leftovers: {', '.join(leftover)}")
            return 3
        pids = self.running_components()
        api = self.control_plane_up()
        print(f"cluster: {'up' if api and all(pids.values()) else 'degraded'}")
        print(f"  kubeconfig: {self.paths.kubeconfig}")
        print(f"  control plane (kwokctl): {'ready' if api else 'NOT READY'}")
        for component, pid in pids.items():
            state = f"running (pid {pid})" if pid else "NOT RUNNING"
            print(f"  {component}: {state}")
            if not pid:
                print("    " + tail(self.paths.logfile(component), 5).replace("\n", "\n    "))
        if api:
            print(
                self.kubectl(
                    "get", "nodes", "-L", "nvidia.com/gpu.product", "-L", NODE_KIND_LABEL, check=False
                ).stdout
            )
        return 0 if api and all(pids.values()) else 1


def json_stream(text: str) -> list[dict[str, Any]]:
    """The objects of kubectl's ``-o json`` for several inputs: one document after another (or a List)."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, Any]] = []
    text, at = text.strip(), 0
    while at < len(text):
        obj, at = decoder.raw_decode(text, at)
        objects += obj["items"] if obj.get("kind") == "List" else [obj]
        while at < len(text) and text[at].isspace():
            at += 1
    return objects


def conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """An object's status conditions (none while its status is empty)."""
    found: list[dict[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    return found


def kubeconfig_for_token(
    admin: dict[str, Any], token: str, user: str, namespace: str | None = None
) -> dict[str, Any]:
    """The admin kubeconfig's cluster (server and CA) with a ServiceAccount's token as the user; ``namespace``
    is the context's (a process that takes its namespace from its kubeconfig, as Argo CD's controller does,
    works there)."""
    cluster = admin["clusters"][0]
    context: dict[str, str] = {"cluster": cluster["name"], "user": user}
    if namespace is not None:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }


def kwok_stages(kwok_version: str) -> list[str]:
    """kwok's own "fast" node and pod stages (from its module, which hack/build-tools downloaded): nodes
    become Ready, pods Running/Ready at once, deletions complete."""
    gomodcache = run(["go", "env", "GOMODCACHE"], what="go env").stdout.strip()
    root = Path(gomodcache) / f"sigs.k8s.io/kwok@{kwok_version}" / "kustomize" / "stage"
    if not root.exists():
        run(["go", "mod", "download", f"sigs.k8s.io/kwok@{kwok_version}"], what="go mod download kwok")
    files = sorted((root / "node" / "fast").glob("*.yaml")) + sorted((root / "pod" / "fast").glob("*.yaml"))
    stages = [f.read_text() for f in files if f.name != "kustomization.yaml"]
    if not stages:
        raise ClusterError(f"kwok stages not found under {root}")
    return stages


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return int(resp.status) == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/cluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build (once) and start the cluster; a no-op when it is up")
    up.add_argument("--gpu-nodes", type=int, default=int(os.environ.get("TRIPTYCH_GPU_NODES", "4")))
    sub.add_parser("down", help="stop everything; leaves no process, route or interface")
    sub.add_parser("status", help="components and nodes")
    restart = sub.add_parser(
        "restart-apiserver", help="stop kube-apiserver and start it again (the rest keeps running)"
    )
    restart.add_argument("--down-seconds", type=float, default=0.0, help="keep it stopped this long first")
    sub.add_parser("kubeconfig", help="print the kubeconfig file's path")
    args = parser.parse_args(argv)
    cluster = Cluster(Paths(cache_dir()))

    def act() -> int:
        if args.command == "up":
            cluster.up(args.gpu_nodes)
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            return cluster.status()
        elif args.command == "restart-apiserver":
            cluster.restart_apiserver(args.down_seconds)
        else:
            print(cluster.paths.kubeconfig)
        return 0

    return report_failures("cluster", args.command, act)
