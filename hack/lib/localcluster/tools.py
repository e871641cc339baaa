"""The machine prerequisites: Debian packages and the Go-built binaries (both cached, both idempotent)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from localcluster.config import HACK
from localcluster.procs import ClusterError

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
}


def ensure_packages() -> None:
    """apt-get install what is missing (needs root, as the whole cluster does)."""
    missing = [pkg for pkg, path in PACKAGES.items() if not Path(path).exists()]
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


def build_binaries() -> dict[str, Path]:
    """Run hack/build-tools (a no-op when cached) and return {set name: directory}."""
    if shutil.which("go") is None:
        raise ClusterError(
            "toolchain: Go >= 1.26 is not on PATH (needed once to build the cluster's binaries)"
        )
    proc = subprocess.run([str(HACK / "build-tools")], stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError("build-tools failed (see the lines above)")
    dirs = {}
    for line in proc.stdout.splitlines():
        name, _, path = line.partition("=")
        dirs[name] = Path(path)
    return dirs
