"""Pure builders of the configuration files and manifests of the local cluster's components.

Each setting that was needed on this machine kind is commented with why (ARCHITECTURE.md, "The local
cluster").
"""

from __future__ import annotations

import json
from pathlib import Path

from localcluster.config import (
    BRIDGE,
    BRIDGE_IP,
    CLUSTER_DOMAIN,
    CLUSTER_NAME,
    CLUSTER_POD_CIDR,
    COREDNS_READY_PORT,
    DNS_SERVICE_IP,
    GPU_PRODUCTS,
    GPU_TAINT_KEY,
    KUBE_PROXY_HEALTHZ_PORT,
    KUBE_PROXY_METRICS_PORT,
    KUBELET_HEALTHZ_PORT,
    KUBELET_PORT,
    KUBERNETES_SERVICE_IP,
    KWOK_NODE_IP,
    KWOK_POD_CIDR,
    NODE_KIND_LABEL,
    NODE_POD_SUBNET,
    PAUSE_IMAGE,
    REAL_NODE,
    SERVICE_CIDR,
    Paths,
)
from localcluster.pki import FRONT_PROXY_CLIENT_CN

# One controller-manager and one scheduler, and nothing restarts them (kwokctl's binary runtime does not
# supervise): with leader election on, an API server outage longer than the renew deadline (10 s) makes them
# exit ("leaderelection lost") for good, and Deployments and scheduling stop until the next `up`.
SINGLE_INSTANCE = {"leader-elect": "false"}


def kwokctl_config(
    paths: Paths, bins: dict[str, Path], *, kube_version: str, apiserver_port: int, stages: list[str]
) -> str:
    """kwokctl's configuration: the control plane from our own binaries, bound to loopback, except the API
    server, which listens on the bridge address so pods can reach it (see network.py)."""
    k8s = bins["kubernetes"]
    pki = paths.pki
    front_proxy = paths.front_proxy_pki  # made by pki.front_proxy before kwokctl starts the API server
    apiserver_args = {
        "bind-address": BRIDGE_IP,
        "advertise-address": BRIDGE_IP,
        "service-cluster-ip-range": SERVICE_CIDR,
        # The API server dials the real kubelet for logs/exec/port-forward with the admin client certificate;
        # the kubelet checks it against the cluster CA and authorizes through the API (no anonymous access).
        "kubelet-client-certificate": str(pki / "admin.crt"),
        "kubelet-client-key": str(pki / "admin.key"),
        # Dial kubelets by IP: node names do not resolve on the host (and must not be looked up outside).
        "kubelet-preferred-address-types": "InternalIP",
        # The aggregation layer, for extension API servers behind an APIService (KEDA's external metrics,
        # hack/keda). The API server proxies to them with a client certificate from a front-proxy CA of its
        # own and names the user in these headers; they trust the headers only from a certificate of that CA
        # with that name, which they read from kube-system/extension-apiserver-authentication (the API
        # server publishes these flags there). kwokctl passes its admin certificate as the proxy client
        # and no header CA, so an extension server would take every request for the admin's: these later
        # flags win.
        "requestheader-client-ca-file": str(front_proxy / "ca.crt"),
        "requestheader-allowed-names": FRONT_PROXY_CLIENT_CN,
        "requestheader-username-headers": "X-Remote-User",
        "requestheader-group-headers": "X-Remote-Group",
        "requestheader-extra-headers-prefix": "X-Remote-Extra-",
        "proxy-client-cert-file": str(front_proxy / "client.crt"),
        "proxy-client-key-file": str(front_proxy / "client.key"),
        # Dial an APIService's endpoint (the bridge address, where hack/keda's metrics server listens), not
        # its Service's ClusterIP: the API server is a host process outside the pod network, and its
        # requests should not depend on kube-proxy's rules.
        "enable-aggregator-routing": "true",
    }
    controller_manager_args = {
        "service-cluster-ip-range": SERVICE_CIDR,
        "cluster-cidr": CLUSTER_POD_CIDR,
        # Pod garbage collection of pods on deleted nodes and terminated pods, quickly.
        "terminated-pod-gc-threshold": "50",
        **SINGLE_INSTANCE,
    }
    kwokctl = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            "kubeVersion": kube_version,
            "bindAddress": "127.0.0.1",
            "kubeApiserverPort": apiserver_port,
            # The serving certificate must cover the addresses in-cluster clients dial: the `kubernetes`
            # Service's ClusterIP and the bridge address it forwards to.
            "kubeApiserverCertSANs": [KUBERNETES_SERVICE_IP, BRIDGE_IP],
            "kubeAuthorization": True,
            "etcdBinary": str(bins["etcd"] / "etcd"),
            "kubeApiserverBinary": str(k8s / "kube-apiserver"),
            "kubeControllerManagerBinary": str(k8s / "kube-controller-manager"),
            "kubeSchedulerBinary": str(k8s / "kube-scheduler"),
            "kubectlBinary": str(k8s / "kubectl"),
            "kwokControllerBinary": str(bins["kwok"] / "kwok"),
            "cacheDir": str(paths.kwok_workdir / "cache"),
        },
        "componentsPatches": [
            {
                "name": "kube-apiserver",
                "extraArgs": [{"key": k, "value": v} for k, v in apiserver_args.items()],
            },
            {
                "name": "kube-controller-manager",
                "extraArgs": [{"key": k, "value": v} for k, v in controller_manager_args.items()],
            },
            {
                "name": "kube-scheduler",
                "extraArgs": [{"key": k, "value": v} for k, v in SINGLE_INSTANCE.items()],
            },
            # kwok manages only the fake GPU nodes, never the real one. (The binary runtime passes
            # --manage-all-nodes=true; these later flags win.)
            {
                "name": "kwok-controller",
                "extraArgs": [
                    {"key": "manage-all-nodes", "value": "false"},
                    {"key": "manage-nodes-with-annotation-selector", "value": "kwok.x-k8s.io/node=fake"},
                    {"key": "node-ip", "value": KWOK_NODE_IP},
                    # Fake pod IPs come from a blackholed range that nothing ever dials.
                    {"key": "cidr", "value": KWOK_POD_CIDR.replace(".0/", ".1/")},
                ],
            },
        ],
    }
    return "---\n".join([json.dumps(kwokctl, indent=2) + "\n", *stages])


def containerd_config(paths: Paths) -> str:
    """containerd with only what the node needs; its own root/state/socket, so a host containerd (if any)
    is untouched."""
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{paths.containerd_socket}"

[ttrpc]
  address = "{paths.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  # No registry is reachable: the sandbox image is built locally and imported (hack/images).
  sandbox_image = "{PAUSE_IMAGE}"
  # The sandbox lacks CAP_SYS_RESOURCE; without this every pod fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # The machine has cgroup v1 and no systemd: cgroupfs, as the kubelet is configured.
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{paths.cni_conf_dir}"
"""


def cni_conflist(paths: Paths) -> str:
    """Bridge + host-local IPAM on the pre-created bridge; no masquerade (nothing may leave the machine)."""
    conf = {
        "cniVersion": "1.0.0",
        "name": CLUSTER_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": NODE_POD_SUBNET, "gateway": BRIDGE_IP}]],
                    # Pods route everything through the bridge address: Service IPs are translated on this
                    # host; anything else is dropped by the egress fence (network.py).
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conf, indent=2)


def kubelet_config(paths: Paths) -> str:
    conf = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": BRIDGE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(paths.pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        # The machine has cgroup v1, which the kubelet refuses by default since 1.35.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        # Pods get only the cluster DNS; nothing outside the cluster resolves.
        "resolvConf": str(paths.state / "resolv.conf"),
        "serializeImagePulls": False,
        # Images are imported, not pulled: nothing may delete them, since nothing could pull them back.
        # The GC thresholds alone are not enough: disk-pressure eviction reclaims by deleting "unused"
        # images whatever they say (a CI machine with a full disk lost the pause image that way, and no
        # pod could start after). So evict on memory only: with mergeDefaultEvictionSettings false, the
        # signals left out here (nodefs, imagefs, inodes) are off. `hack/images` checks free space itself.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi"},
        "mergeDefaultEvictionSettings": False,
        "maxPods": 110,
        "makeIPTablesUtilChains": True,
        "shutdownGracePeriod": "0s",
        "podPidsLimit": 4096,
    }
    return json.dumps(conf, indent=2)


def kube_proxy_config(kubeconfig: Path) -> str:
    conf = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "hostnameOverride": REAL_NODE,
        "bindAddress": BRIDGE_IP,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{KUBE_PROXY_METRICS_PORT}",
        "clusterCIDR": CLUSTER_POD_CIDR,
        # NodePorts only on the bridge address, never on the machine's real interfaces.
        "nodePortAddresses": [f"{BRIDGE_IP}/32"],
        # 0 = leave the host's conntrack sysctls alone (the sandbox may not allow writing them).
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"masqueradeAll": False, "localhostNodePorts": False},
    }
    return json.dumps(conf, indent=2)


def corefile(kubeconfig: Path) -> str:
    """CoreDNS as a host process on the bridge address; cluster names only, no upstream resolver."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {BRIDGE_IP}
    errors
    ready 127.0.0.1:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {BRIDGE_IP}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def dns_objects() -> list[dict[str, object]]:
    """The kube-dns Service (fixed ClusterIP, no selector) and its EndpointSlice pointing at CoreDNS."""
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
            "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [{**p, "targetPort": 53} for p in ports]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-host",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "triptych-hack",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [BRIDGE_IP], "conditions": {"ready": True}, "nodeName": REAL_NODE}],
            "ports": ports,
        },
    ]


def gpu_node(index: int) -> dict[str, object]:
    """A fake GPU node managed by kwok: 8 GPUs of one of two products, RDMA, zone and rack, tainted."""
    product = GPU_PRODUCTS[index % len(GPU_PRODUCTS)]
    name = f"gpu-{index}"
    capacity = {
        "cpu": "96",
        "memory": "1Ti",
        "pods": "110",
        "ephemeral-storage": "2Ti",
        "nvidia.com/gpu": "8",
        "rdma/ib": "8",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                NODE_KIND_LABEL: "kwok-gpu",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": product,
                "nvidia.com/gpu.count": "8",
                "topology.kubernetes.io/zone": f"zone-{'ab'[index // 2 % 2]}",
                "topology.kubernetes.io/region": "local",
                "triptych.dev/rack": f"rack-{index // 2}",
                "feature.node.kubernetes.io/rdma.available": "true",
            },
        },
        "spec": {"taints": [{"key": GPU_TAINT_KEY, "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": capacity,
            "capacity": capacity,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "fake",
                "kubeProxyVersion": "fake",
                "containerRuntimeVersion": "kwok://fake",
                "osImage": "kwok",
                "kernelVersion": "fake",
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
            },
        },
    }
