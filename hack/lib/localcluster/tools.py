"""The machine prerequisites: Debian packages and the Go-built binaries (both cached, both idempotent)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from localcluster.config import HACK
from localcluster.procs import ClusterError, run

# Debian package -> a file it installs (present = installed).
PACKAGES = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "buildah": "/usr/bin/buildah",
    "debootstrap": "/usr/sbin/debootstrap",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "iproute2": "/usr/sbin/ip",
    "nats-server": "/usr/sbin/nats-server",
    "socat": "/usr/bin/socat",
    # Certificates the cluster issues itself (pki.py: the API server's front proxy, KEDA's).
    "openssl": "/usr/bin/openssl",
    # The autoscaler's Prometheus metrics source is tested against a real Prometheus (tests/e2e/autoscaling).
    "prometheus": "/usr/bin/prometheus",
    # The chart's Argo CD health check runs under Lua 5.1 in the unit tier (tests/unit/operator/
    # test_health_lua51.py), which skips without it: installed with the cluster, so CI runs it.
    "lua5.1": "/usr/bin/lua5.1",
}


def ensure_packages(packages: Mapping[str, str] = PACKAGES) -> None:
    """apt-get install what is missing of ``packages`` (Debian package -> a file it installs; the cluster's by
    default, an opt-in tier's own otherwise). Needs root, as the whole cluster does."""
    missing = [pkg for pkg, path in packages.items() if not Path(path).exists()]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise ClusterError(f"packages: missing {', '.join(missing)} and no apt-get to install them")
    print(f"cluster: installing Debian packages: {' '.join(missing)}", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, timeout=900)
        if proc.returncode != 0:
            raise ClusterError(
                f"packages: {' '.join(cmd)} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}"
            )


def build_binaries(*extras: str) -> dict[str, Path]:
    """Run hack/build-tools (a no-op when cached), with the sets built only on request named in ``extras``
    (keda, argocd), and return {set name: directory}."""
    if shutil.which("go") is None:
        raise ClusterError(
            "toolchain: Go >= 1.26 is not on PATH (needed once to build the cluster's binaries)"
        )
    command = [str(HACK / "build-tools"), *extras]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"{' '.join(['hack/build-tools', *extras])} failed (see the lines above)")
    dirs = {}
    for line in proc.stdout.splitlines():
        name, _, path = line.partition("=")
        dirs[name] = Path(path)
    return dirs


def module_source(module: str, version: str, toolchain: str | None = None) -> Path:
    """The source of a Go module's release in the module cache, downloaded through the machine's module proxy
    when it is not there: where a tier reads the install manifests its release ships. ``toolchain`` (a
    GOTOOLCHAIN value) where the module's go.mod asks for a newer Go than the machine's."""
    env = {**os.environ, "GOTOOLCHAIN": toolchain} if toolchain else None
    got = run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        what=f"go mod download {module}@{version}",
        env=env,
        timeout=600,
    )
    return Path(json.loads(got.stdout)["Dir"])
