"""Debian's Prometheus (installed with the local cluster's packages) for a test: on a free loopback port,
with the scrape configs the test gives, a fresh TSDB in a temporary directory, stopped afterwards."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.kube import stop_process, wait_for


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_prometheus(scrape_configs: list[dict[str, Any]], *, interval: str = "1s") -> Iterator[str]:
    """Prometheus scraping `scrape_configs` every `interval`; yields its base URL once it is ready."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(binary).exists(), "prometheus missing: hack/cluster up installs the Debian package"
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="triptych-prom-") as tmp:
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": scrape_configs,
        }
        (Path(tmp) / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log_path = Path(tmp) / "prometheus.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [binary, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                 f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:

            def ready() -> bool:
                assert proc.poll() is None, "prometheus exited: " + log_path.read_text()
                with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    return int(r.status) == 200
                return False

            wait_for("prometheus ready", ready, timeout=60, interval=0.5)
            yield url
        finally:
            stop_process(proc, grace_s=20)
