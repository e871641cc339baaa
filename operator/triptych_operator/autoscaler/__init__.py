"""The autoscaler: per role, a pure decision (`decision.py`) with the HorizontalPodAutoscaler's semantics,
fed by a metrics source, its replicas written through the kube module.

Only the decision exists so far; the metrics sources and the evaluation loop come with issue 10.
"""
