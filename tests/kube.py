"""Test-side access to the local cluster through kubectl (the same binary users run), with deadlines."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition was not met before its deadline; the message says what was last seen."""


def stop_process(process: subprocess.Popen[Any], grace_s: float) -> None:
    """SIGTERM (unless it has exited already), ``grace_s`` to exit, then SIGKILL: how every test helper
    ends a process it started."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_for(what: str, probe: Callable[[], T | None], *, timeout: float = 60, interval: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; raise WaitTimeout with the last value otherwise."""
    end = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < end:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last!r}")


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path
    kubectl_bin: Path
    helm_bin: Path

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.kubectl_bin), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, *objects: dict[str, Any], namespace: str | None = None) -> None:
        doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
        ns = ["-n", namespace] if namespace else []
        self.run("apply", *ns, "-f", "-", stdin=doc)

    def get(self, kind: str, name: str, namespace: str) -> Any | None:
        proc = self.run("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else None

    def items(self, kind: str, namespace: str, selector: str | None = None) -> list[Any]:
        args = ["get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        items: list[Any] = self.json(*args)["items"]
        return items

    def helm(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.helm_bin), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pod_phase(self, name: str, namespace: str) -> str | None:
        pod = self.get("pod", name, namespace)
        return None if pod is None else str(pod["status"].get("phase"))

    def wait_pod_done(self, name: str, namespace: str, timeout: float = 120) -> str:
        """Wait until a run-to-completion pod Succeeded or Failed; returns its logs."""
        phase = wait_for(
            f"pod {namespace}/{name} to finish",
            lambda: p if (p := self.pod_phase(name, namespace)) in ("Succeeded", "Failed") else None,
            timeout=timeout,
        )
        logs = self.run("logs", name, "-n", namespace, check=False).stdout
        assert phase == "Succeeded", f"pod {name} {phase}; logs:\n{logs}"
        return logs
