"""Certificates the local cluster issues itself (kwokctl makes the cluster's own CA and admin certificate):
a CA per purpose and leaf certificates from it, made with openssl once and kept until ``down`` removes the
cluster's folder.

- the front proxy (``front_proxy``): the API server's client certificate towards aggregated API servers
  (APIServices such as KEDA's external metrics), from a CA of its own, as Kubernetes asks: a certificate of
  the cluster CA must not be able to pose as the proxy and name any user in a header;
- KEDA's certificate (``hack/keda``): serving and client in one, as KEDA's own certificate rotation makes it.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.procs import run

# The name the API server's front-proxy certificate carries; aggregated servers accept only this name
# (--requestheader-allowed-names).
FRONT_PROXY_CLIENT_CN = "front-proxy-client"


@dataclass(frozen=True)
class KeyPair:
    crt: Path
    key: Path

    def exists(self) -> bool:
        return self.crt.exists() and self.key.exists()


def _config(common_name: str, extensions: Sequence[str]) -> str:
    """An openssl config of our own, so the machine's openssl.cnf defaults add nothing."""
    head = ["[req]", "prompt = no", "distinguished_name = dn", "[dn]", f"CN = {common_name}", "[ext]"]
    return "\n".join([*head, *extensions])


def ensure_ca(folder: Path, common_name: str) -> KeyPair:
    """``folder``/ca.crt and ca.key: a self-signed CA, made unless both are there."""
    ca = KeyPair(folder / "ca.crt", folder / "ca.key")
    if ca.exists():
        return ca
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="triptych-pki-") as tmp:
        cnf = Path(tmp) / "ca.cnf"
        cnf.write_text(
            _config(
                common_name,
                [
                    "basicConstraints = critical, CA:TRUE",
                    "keyUsage = critical, keyCertSign, cRLSign",
                    "subjectKeyIdentifier = hash",
                ],
            )
        )
        run(
            ["openssl", "req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
             "-config", cnf, "-extensions", "ext", "-keyout", ca.key, "-out", ca.crt],
            what=f"pki: make CA {common_name}",
        )  # fmt: skip
    ca.key.chmod(0o600)
    return ca


def issue(
    ca: KeyPair,
    out: KeyPair,
    common_name: str,
    *,
    usages: Sequence[str],
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> KeyPair:
    """A certificate of ``ca`` for ``common_name`` (extended key usages ``usages``: serverAuth, clientAuth),
    made unless ``out`` is there."""
    if out.exists():
        return out
    out.crt.parent.mkdir(parents=True, exist_ok=True)
    extensions = [
        "basicConstraints = critical, CA:FALSE",
        "keyUsage = critical, digitalSignature, keyEncipherment",
        f"extendedKeyUsage = {', '.join(usages)}",
    ]
    names = [f"DNS:{d}" for d in dns_names] + [f"IP:{i}" for i in ips]
    if names:
        extensions.append(f"subjectAltName = {', '.join(names)}")
    with tempfile.TemporaryDirectory(prefix="triptych-pki-") as tmp:
        cnf, csr = Path(tmp) / "leaf.cnf", Path(tmp) / "leaf.csr"
        cnf.write_text(_config(common_name, extensions))
        run(
            ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-config", cnf,
             "-keyout", out.key, "-out", csr],
            what=f"pki: key and request for {common_name}",
        )  # fmt: skip
        run(
            ["openssl", "x509", "-req", "-in", csr, "-CA", ca.crt, "-CAkey", ca.key,
             "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "3650", "-sha256",
             "-extfile", cnf, "-extensions", "ext", "-out", out.crt],
            what=f"pki: sign {common_name}",
        )  # fmt: skip
    out.key.chmod(0o600)
    return out


def front_proxy(folder: Path) -> tuple[KeyPair, KeyPair]:
    """The front-proxy CA and the API server's client certificate from it (``configs.kwokctl_config``)."""
    ca = ensure_ca(folder, "triptych-front-proxy-ca")
    client = issue(
        ca,
        KeyPair(folder / "client.crt", folder / "client.key"),
        FRONT_PROXY_CLIENT_CN,
        usages=["clientAuth"],
    )
    return ca, client
