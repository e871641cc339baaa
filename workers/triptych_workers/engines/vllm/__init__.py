"""The vLLM backend: a vLLM server per pod, driven over its HTTP API by the triptych-worker sidecar."""
