"""The real node's network: a bridge, blackhole routes, an egress fence, and the API server's address.

Rules (ARCHITECTURE.md, "Networking safety"):
- the bridge exists (with the gateway address) before the kubelet starts, and that address is the node IP;
- pod, service and kwok CIDRs get blackhole routes, so a packet for them that is not for a real pod on the
  bridge has nowhere to go; nothing is masqueraded to the outside;
- pods may talk to each other and to this host, never past it: forwarded traffic that enters or leaves
  through any interface other than the bridge is dropped (chain TRIPTYCH-FORWARD in the mangle table, which is
  evaluated before the filter table, where kube-proxy keeps prepending its own accept rules);
- the API server listens on the bridge address only (pods reach it there through the ``kubernetes`` Service);
  the control plane's own clients dial 127.0.0.1, which one DNAT rule sends to the bridge address.
Teardown removes all of it, plus what the kubelet, kube-proxy and CNI plugins leave behind.
"""

from __future__ import annotations

from pathlib import Path

from localcluster.config import BLACKHOLES, BRIDGE, BRIDGE_IP, NODE_POD_SUBNET
from localcluster.procs import run

FORWARD_CHAIN = "TRIPTYCH-FORWARD"
NAT_CHAIN = "TRIPTYCH-OUTPUT"
INPUT_CHAIN = "TRIPTYCH-INPUT"  # ports a host process cannot keep off other interfaces (fence_inbound)
# Chains the kubelet and the CNI portmap plugin create and never remove.
LEFTOVER_CHAINS = {
    "filter": ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "CNI-FORWARD"),
    "nat": (
        "KUBE-KUBELET-CANARY",
        "KUBE-MARK-DROP",
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-SNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
        "CNI-DN-*",
        "CNI-*",
    ),
    "mangle": ("KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"),
}
SYSCTLS = {
    "net/ipv4/ip_forward": "1",  # pod -> Service -> pod is routed through this host
    "net/bridge/bridge-nf-call-iptables": "1",  # Service NAT for pod-to-pod traffic on the same bridge
    "net/bridge/bridge-nf-call-ip6tables": "1",
}


def sysctl_get(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def sysctl_set(key: str, value: str) -> None:
    Path("/proc/sys", key).write_text(value)


def _ipt(*args: str, check: bool = True, v6: bool = False) -> bool:
    return (
        run(
            ["ip6tables" if v6 else "iptables", "-w", "5", *args],
            what="iptables",
            check=check,
        ).returncode
        == 0
    )


def setup(apiserver_port: int) -> None:
    """Create the bridge, routes and rules (idempotent)."""
    for key, value in SYSCTLS.items():
        sysctl_set(key, value)
    if run(["ip", "link", "show", BRIDGE], what="ip link", check=False).returncode != 0:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], what=f"create bridge {BRIDGE}")
    prefix = NODE_POD_SUBNET.split("/")[1]
    addrs = run(["ip", "-4", "addr", "show", "dev", BRIDGE], what="ip addr").stdout
    if f"{BRIDGE_IP}/{prefix}" not in addrs:
        run(["ip", "addr", "add", f"{BRIDGE_IP}/{prefix}", "dev", BRIDGE], what=f"address {BRIDGE}")
    run(["ip", "link", "set", BRIDGE, "up"], what=f"bring up {BRIDGE}")
    for cidr in BLACKHOLES:
        run(["ip", "route", "replace", "blackhole", cidr], what=f"blackhole route {cidr}")

    # Egress fence: forwarded packets may only go bridge -> bridge.
    if not _ipt("-t", "mangle", "-nL", FORWARD_CHAIN, check=False):
        _ipt("-t", "mangle", "-N", FORWARD_CHAIN)
    _ipt("-t", "mangle", "-F", FORWARD_CHAIN)
    _ipt("-t", "mangle", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
    _ipt("-t", "mangle", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-j", "DROP")
    _ipt("-t", "mangle", "-A", FORWARD_CHAIN, "-o", BRIDGE, "-j", "DROP")
    if not _ipt("-t", "mangle", "-C", "FORWARD", "-j", FORWARD_CHAIN, check=False):
        _ipt("-t", "mangle", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN)

    # 127.0.0.1:<api port> -> bridge address, for the control plane's clients and kubeconfigs.
    if not _ipt("-t", "nat", "-nL", NAT_CHAIN, check=False):
        _ipt("-t", "nat", "-N", NAT_CHAIN)
    _ipt("-t", "nat", "-F", NAT_CHAIN)
    _ipt(
        "-t",
        "nat",
        "-A",
        NAT_CHAIN,
        "-d",
        "127.0.0.1/32",
        "-p",
        "tcp",
        "--dport",
        str(apiserver_port),
        "-j",
        "DNAT",
        "--to-destination",
        f"{BRIDGE_IP}:{apiserver_port}",
    )
    if not _ipt("-t", "nat", "-C", "OUTPUT", "-j", NAT_CHAIN, check=False):
        _ipt("-t", "nat", "-I", "OUTPUT", "1", "-j", NAT_CHAIN)


def _fence_rules(port: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """fence_inbound's two rules for ``port``: from the bridge, return; from anywhere but loopback, drop."""
    tcp = ("-p", "tcp", "--dport", str(port))
    return (*tcp, "-i", BRIDGE, "-j", "RETURN"), (*tcp, "!", "-i", "lo", "-j", "DROP")


def fence_inbound(port: int) -> None:
    """Drop TCP connections to `port` arriving on any interface but loopback and the bridge, IPv4 and IPv6:
    for a host process that binds every address with no flag to narrow it (KEDA's metrics server's own
    /metrics, Argo CD's application controller's), so that it is reachable only from this machine and its
    pods. Idempotent; `unfence_inbound` and the cluster's teardown remove it."""
    allow, drop = _fence_rules(port)
    for v6 in (False, True):
        if not _ipt("-nL", INPUT_CHAIN, check=False, v6=v6):
            _ipt("-N", INPUT_CHAIN, v6=v6)
        if not _ipt("-C", INPUT_CHAIN, *drop, check=False, v6=v6):
            _ipt("-A", INPUT_CHAIN, *allow, v6=v6)
            _ipt("-A", INPUT_CHAIN, *drop, v6=v6)
        if not _ipt("-C", "INPUT", "-j", INPUT_CHAIN, check=False, v6=v6):
            _ipt("-I", "INPUT", "1", "-j", INPUT_CHAIN, v6=v6)


def unfence_inbound(port: int | None = None) -> None:
    """Remove fence_inbound's rules for ``port`` (each tier its own, so one's `down` leaves another's
    fence), or the whole chain when no port is named."""
    for v6 in (False, True):
        if not _chains("filter", INPUT_CHAIN, v6=v6):
            continue
        if port is None:
            _delete_chain("filter", INPUT_CHAIN, v6=v6)
            continue
        for rule in _fence_rules(port):
            while _ipt("-C", INPUT_CHAIN, *rule, check=False, v6=v6):
                _ipt("-D", INPUT_CHAIN, *rule, v6=v6)
        listing = run(
            ["ip6tables" if v6 else "iptables", "-w", "5", "-S", INPUT_CHAIN], what="iptables", check=False
        ).stdout
        if not any(line.startswith("-A ") for line in listing.splitlines()):
            _delete_chain("filter", INPUT_CHAIN, v6=v6)  # the last fence: nothing of it is left


def _delete_chain(table: str, chain: str, *, v6: bool = False) -> None:
    """Remove every jump to ``chain`` in ``table``, then flush and delete it (absent chains are fine)."""
    listing = run(
        ["ip6tables-save" if v6 else "iptables-save", "-t", table], what="iptables-save", check=False
    ).stdout
    for line in listing.splitlines():
        if line.startswith("-A ") and f"-j {chain}" in line.split(" -m comment")[0] + " ":
            rule = line[3:].split()
            _ipt("-t", table, "-D", *rule, check=False, v6=v6)
    _ipt("-t", table, "-F", chain, check=False, v6=v6)
    _ipt("-t", table, "-X", chain, check=False, v6=v6)


def _chains(table: str, pattern: str, *, v6: bool = False) -> list[str]:
    listing = run(
        ["ip6tables-save" if v6 else "iptables-save", "-t", table], what="iptables-save", check=False
    ).stdout
    names = [line[1:].split()[0] for line in listing.splitlines() if line.startswith(":")]
    if pattern.endswith("*"):
        return [n for n in names if n.startswith(pattern[:-1])]
    return [n for n in names if n == pattern]


def teardown(ip_forward_before: str | None) -> list[str]:
    """Remove everything ``setup`` and the node's components added. Returns what was removed."""
    removed: list[str] = []
    for table, chain in (("filter", FORWARD_CHAIN), ("mangle", FORWARD_CHAIN), ("nat", NAT_CHAIN)):
        if _chains(table, chain):
            _delete_chain(table, chain)
            removed.append(f"iptables {table}/{chain}")
    for v6 in (False, True):
        if _chains("filter", INPUT_CHAIN, v6=v6):
            _delete_chain("filter", INPUT_CHAIN, v6=v6)
            removed.append(f"{'ip6tables' if v6 else 'iptables'} filter/{INPUT_CHAIN}")
    for v6 in (False, True):
        for table, patterns in LEFTOVER_CHAINS.items():
            for pattern in patterns:
                for chain in _chains(table, pattern, v6=v6):
                    _delete_chain(table, chain, v6=v6)
                    removed.append(f"{'ip6tables' if v6 else 'iptables'} {table}/{chain}")
    # Pod network namespaces and veths of pods that were killed without a CNI DEL.
    netns = Path("/var/run/netns")
    if netns.is_dir():
        for ns in netns.iterdir():
            if ns.name.startswith("cni-"):
                run(["ip", "netns", "delete", ns.name], what="ip netns delete", check=False)
                removed.append(f"netns {ns.name}")
    links = run(["ip", "-o", "link", "show", "master", BRIDGE], what="ip link", check=False).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        run(["ip", "link", "delete", name], what="ip link delete", check=False)
        removed.append(f"veth {name}")
    if run(["ip", "link", "show", BRIDGE], what="ip link", check=False).returncode == 0:
        run(["ip", "link", "delete", BRIDGE], what=f"delete bridge {BRIDGE}")
        removed.append(f"bridge {BRIDGE}")
    routes = run(["ip", "route", "show", "type", "blackhole"], what="ip route", check=False).stdout
    for cidr in BLACKHOLES:
        if cidr in routes:
            run(["ip", "route", "delete", "blackhole", cidr], what=f"delete route {cidr}", check=False)
            removed.append(f"route blackhole {cidr}")
    if ip_forward_before is not None:
        sysctl_set("net/ipv4/ip_forward", ip_forward_before)
    return removed


def leftovers() -> list[str]:
    """What of the cluster's network is still present (for ``status`` and the teardown test)."""
    found: list[str] = []
    if run(["ip", "link", "show", BRIDGE], what="ip link", check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    routes = run(["ip", "route", "show", "type", "blackhole"], what="ip route", check=False).stdout
    found += [f"route blackhole {c}" for c in BLACKHOLES if c in routes]
    for v6 in (False, True):
        for table in ("filter", "nat", "mangle"):
            for prefix in ("KUBE-", "TRIPTYCH-", "CNI-"):
                found += [
                    f"{'ip6tables' if v6 else 'iptables'} {table}/{c}"
                    for c in _chains(table, prefix + "*", v6=v6)
                ]
    netns = Path("/var/run/netns")
    if netns.is_dir():
        found += [f"netns {ns.name}" for ns in netns.iterdir() if ns.name.startswith("cni-")]
    return found
