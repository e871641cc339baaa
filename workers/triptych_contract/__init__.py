"""The contract between the operator and the workers: ports, environment variable names, label keys,
metric names and probe paths.

Both sides import this module so they cannot drift. It must stay stdlib-only (import-linter checks that it
imports nothing from the project and no third-party package), because the operator image carries no ML stack
and the worker image no Kubernetes client.
"""

from __future__ import annotations

from typing import Final, Literal

API_GROUP: Final = "triptych.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "MultimodalDeployment"
PLURAL: Final = "multimodaldeployments"
SHORT_NAMES: Final = ("mmdeploy", "mmd")

# Ports every worker container exposes.
HTTP_PORT: Final = 8000  # OpenAI-compatible API (frontend only)
METRICS_PORT: Final = 9090  # Prometheus /metrics and the health probes, on every role

# Probe paths served on METRICS_PORT.
LIVENESS_PATH: Final = "/livez"
READINESS_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

# Label keys the operator puts on every child object and the workers read back through the downward API.
LABEL_PREFIX: Final = API_GROUP
LABEL_DEPLOYMENT: Final = f"{LABEL_PREFIX}/deployment"
LABEL_ROLE: Final = f"{LABEL_PREFIX}/role"
LABEL_BACKEND: Final = f"{LABEL_PREFIX}/backend"

# Environment variables the operator sets on worker containers.
ENV_ROLE: Final = "TRIPTYCH_ROLE"
ENV_DEPLOYMENT: Final = "TRIPTYCH_DEPLOYMENT"
ENV_NAMESPACE: Final = "TRIPTYCH_NAMESPACE"
ENV_CONFIG: Final = "TRIPTYCH_CONFIG"
ENV_POD_IP: Final = "TRIPTYCH_POD_IP"
ENV_NATS_URL: Final = "TRIPTYCH_NATS_URL"

ROLES: Final = ("frontend", "encode", "prefill", "decode")
BACKENDS: Final = ("vllm", "sglang", "trtllm", "reference")
MODALITIES: Final = ("image", "video", "audio")
# The same names as types, written once for the workers' annotations (a unit test keeps each Literal equal to
# its tuple above).
Backend = Literal["vllm", "sglang", "trtllm", "reference"]
Modality = Literal["image", "video", "audio"]

# Metric names workers publish and the autoscaler reads (labels: role, deployment).
METRIC_QUEUE_DEPTH: Final = "triptych_queue_depth"
METRIC_IN_FLIGHT: Final = "triptych_requests_in_flight"
METRIC_REQUESTS: Final = "triptych_requests_total"
METRIC_TTFT: Final = "triptych_time_to_first_token_seconds"
METRIC_ITL: Final = "triptych_inter_token_latency_seconds"
METRIC_ENCODER_CACHE_UTILIZATION: Final = "triptych_encoder_cache_utilization"
METRIC_ENCODER_CACHE_HIT_RATE: Final = "triptych_encoder_cache_hit_rate"
METRIC_ENCODER_CACHE_EVICTIONS: Final = "triptych_encoder_cache_evictions_total"
METRIC_KV_CACHE_UTILIZATION: Final = "triptych_kv_cache_utilization"
METRIC_TRANSFER_BYTES: Final = "triptych_transfer_bytes_total"
METRIC_TRANSFER_SECONDS: Final = "triptych_transfer_seconds"

# Added with the MultimodalDeployment API (operator issue 5).
# Port of a backend engine's own HTTP server (vLLM/SGLang/TRT-LLM) inside a worker pod; the triptych worker
# beside it (same pod) reaches the engine on 127.0.0.1 at this port, the frontend through the role's Service.
ENGINE_PORT: Final = 8001
# Where the operator mounts the worker configuration (a ConfigMap) in every worker container.
CONFIG_DIR: Final = "/etc/triptych"
CONFIG_FILE: Final = "config.yaml"
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIG_FILE}"
# The serving modes a MultimodalDeployment folds into (which of encode/prefill are separate pools).
MODES: Final = ("E/P/D", "E/PD", "EP/D", "EPD")

# Added with the transport (issue 6, items 3-4). Data plane: registered memory held by NIXL (pooled, reused),
# the part of it leased to a published payload not yet read, leases that ran out before their reader came,
# which data plane a process runs (labels: transport), and a configured RDMA transport that ended up on
# something else (labels: requested, effective, reason) -- the operator surfaces the last one.
METRIC_TRANSFER_REGISTERED_BYTES: Final = "triptych_transfer_registered_bytes"
METRIC_TRANSFER_LEASED_BYTES: Final = "triptych_transfer_leased_bytes"
METRIC_TRANSFER_LEASES_EXPIRED: Final = "triptych_transfer_leases_expired_total"
METRIC_TRANSFER_DISCARDED: Final = "triptych_transfer_discarded_total"
METRIC_DATA_PLANE: Final = "triptych_data_plane_info"
METRIC_TRANSPORT_DEGRADED: Final = "triptych_transport_degraded"
# Requests a worker turned away because its local queue was full (labels: role, deployment).
METRIC_REQUESTS_REJECTED: Final = "triptych_requests_rejected_total"

# The unit of spec.media.maxFileSizeMB (and every "MB" of a media limit): SI megabytes, 10^6 bytes, as the
# CRD documents. The operator writes the number through; the media connector multiplies by this.
BYTES_PER_MB: Final = 1_000_000

# spec.serving, as the operator writes it into every role's worker configuration (`serving` block):
# how the frontend picks an encode worker, and where images are decoded.
ENCODE_ROUTING_POLICIES: Final = ("cache-aware", "round-robin")
EncodeRouting = Literal["cache-aware", "round-robin"]
IMAGE_DECODE_PLACES: Final = ("encode", "frontend")
ImageDecodePlace = Literal["encode", "frontend"]

# Requests the frontend holds while a role it needs has no ready worker (labels: role, deployment); the
# autoscaler wakes a pool scaled to zero on it.
METRIC_PENDING_REQUESTS: Final = "triptych_pending_requests"
