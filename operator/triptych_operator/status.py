"""Pure status logic: observed child Deployments (+ blockers found in pods/events) -> the new status.

Conditions follow kstatus polarity: `Ready` (normal-true), `Reconciling` and `Stalled` (abnormal-true).
Reconciling and Stalled are kept mutually exclusive (kstatus reads Reconciling first, so a stalled object
must not also be Reconciling or it would never show as Failed). `lastTransitionTime` changes only when a
condition's status flips; every condition and the status carry `observedGeneration`. The writer patches
`/status` only when `status_changed` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from triptych_contract import LABEL_ROLE

from triptych_operator.api import Condition, MultimodalDeploymentSpec, MultimodalDeploymentStatus, RoleStatus

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
CONDITION_TYPES = (READY, RECONCILING, STALLED)
# Not a kstatus condition: True while some worker runs on another data plane than the one configured.
TRANSPORT_DEGRADED = "TransportDegraded"
# Pod-level reasons the kube module reports as blockers.
BLOCKER_REASONS = (
    "Unschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
)


@dataclass(frozen=True)
class Blocker:
    """Something that keeps a role from progressing, found by the kube module in pod conditions/events."""

    role: str
    reason: str  # e.g. Unschedulable, ErrImagePull, ImagePullBackOff
    message: str


@dataclass(frozen=True)
class RoleScaling:
    """What the autoscaler last saw and decided for one role (written into its RoleStatus)."""

    scaler: str  # Spec, Builtin or External
    observed: Mapping[str, float]  # queueDepth / inFlight / cacheUtilization -> mean per ready replica
    reason: str = ""
    pending: int | None = None
    last_scale_time: datetime | None = None


@dataclass(frozen=True)
class TransportReport:
    """A worker pod reporting that its data plane is not the one configured (RDMA requested, TCP used)."""

    role: str
    pod: str
    requested: str
    effective: str
    reason: str


def _cond(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return None


@dataclass(frozen=True)
class _RoleState:
    status: RoleStatus
    done: bool  # rolled out and all desired replicas ready
    stall: tuple[str, str] | None  # (reason, message)
    progress: str  # why not done, when not stalled


def _role_state(
    role: str,
    desired_spec: int,
    deployment: Mapping[str, Any] | None,
    previous: RoleStatus | None,
    blockers: Sequence[Blocker],
    *,
    scaling: RoleScaling | None = None,
) -> _RoleState:
    keep: dict[str, Any] = {}
    if scaling is not None:
        keep = {
            "scaler": scaling.scaler,
            "queue_depth": _rounded(scaling.observed.get("queueDepth")),
            "in_flight": _rounded(scaling.observed.get("inFlight")),
            "cache_utilization": _rounded(scaling.observed.get("cacheUtilization")),
            "pending": scaling.pending,
            "scaling": scaling.reason[:1024],
            "last_scale_time": scaling.last_scale_time,
        }
    elif previous is not None:  # a refresh without a new observation keeps the last one
        keep = previous.model_dump(
            include={"scaler", "queue_depth", "in_flight", "cache_utilization", "pending", "scaling",
                     "last_scale_time"}
        )  # fmt: skip
    if deployment is None:
        st = RoleStatus(desired=desired_spec, reason="Creating", **keep)
        return _RoleState(st, False, None, f"{role}: Deployment not created yet")
    dspec, dstat = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = int(dspec.get("replicas", desired_spec))
    replicas, ready = int(dstat.get("replicas", 0)), int(dstat.get("readyReplicas", 0))
    updated, available = int(dstat.get("updatedReplicas", 0)), int(dstat.get("availableReplicas", 0))
    generation = int((deployment.get("metadata") or {}).get("generation", 0))
    observed = int(dstat.get("observedGeneration", 0))
    stall: tuple[str, str] | None = None
    progressing, failure = _cond(deployment, "Progressing"), _cond(deployment, "ReplicaFailure")
    if failure is not None and failure.get("status") == "True":
        stall = ("ReplicaFailure", f"{role}: {failure.get('message', '')}".strip())
    elif progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        stall = ("ProgressDeadlineExceeded", f"{role}: {progressing.get('message', '')}".strip())
    for b in blockers:
        if b.role == role and stall is None:
            stall = (b.reason, f"{role}: {b.message}")
    done = observed >= generation and updated == desired and replicas == desired and available >= desired
    done = done and ready >= desired
    if observed < generation:
        progress = f"{role}: Deployment generation {generation} not observed yet"
    elif updated < desired:
        progress = f"{role}: {updated}/{desired} pods updated"
    elif replicas > desired:
        progress = f"{role}: {replicas - desired} old pods terminating"
    else:
        progress = f"{role}: {ready}/{desired} pods ready"
    reason = "" if done else (stall[0] if stall else "RollingOut")
    st = RoleStatus(desired=desired, replicas=replicas, ready=ready, updated=updated, reason=reason, **keep)
    return _RoleState(st, done and stall is None, stall, progress)


def _rounded(value: float | None) -> float | None:
    """Two decimals: status changes (and is written) only when what a person reads changes."""
    return None if value is None else round(value, 2)


def _transport_condition(
    previous: Sequence[Condition],
    reports: Sequence[TransportReport] | None,
    generation: int,
    now: datetime,
) -> Condition | None:
    """TransportDegraded from the last observation's reports; without one, the previous condition."""
    if reports is None:
        return next((c for c in previous if c.type == TRANSPORT_DEGRADED), None)
    if not reports:
        return _condition(previous, TRANSPORT_DEGRADED, "False", "AsConfigured", "", generation, now)
    message = "; ".join(
        f"{r.role} pod {r.pod}: {r.requested} requested, {r.effective} in use ({r.reason})" for r in reports
    )
    return _condition(previous, TRANSPORT_DEGRADED, "True", "FellBack", message, generation, now)


def _condition(  # noqa: PLR0917
    previous: Sequence[Condition],
    type_: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> Condition:
    """A condition whose lastTransitionTime is carried over unless its status flipped."""
    old = next((c for c in previous if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == status else now
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:32768],
        last_transition_time=since,
        observed_generation=generation,
    )


def _previous(previous: Mapping[str, Any] | MultimodalDeploymentStatus | None) -> MultimodalDeploymentStatus:
    if previous is None:
        return MultimodalDeploymentStatus()
    if isinstance(previous, MultimodalDeploymentStatus):
        return previous
    try:
        return MultimodalDeploymentStatus.model_validate(dict(previous))
    except ValueError:  # unreadable old status (older operator): start afresh, times become `now`
        return MultimodalDeploymentStatus()


def compute_status(
    spec: MultimodalDeploymentSpec,
    generation: int,
    deployments: Sequence[Mapping[str, Any]],
    previous: Mapping[str, Any] | MultimodalDeploymentStatus | None,
    now: datetime,
    *,
    blockers: Sequence[Blocker] = (),
    scaling: Mapping[str, RoleScaling] | None = None,
    transport: Sequence[TransportReport] | None = None,
) -> MultimodalDeploymentStatus:
    """The status after reconciling `generation`: per-role counts from the child Deployments (matched by
    the role label), Ready/Reconciling/Stalled, per-role 'ready/desired' summaries; with an autoscaler
    observation (`scaling`, `transport`), what it saw and decided and TransportDegraded."""
    prev = _previous(previous)
    by_role = {(d.get("metadata") or {}).get("labels", {}).get(LABEL_ROLE): d for d in deployments}
    states: dict[str, _RoleState] = {}
    for role in spec.present_roles():
        role_spec = spec.role(role)
        desired = role_spec.replicas if role_spec is not None else 0
        states[role] = _role_state(
            role,
            desired,
            by_role.get(role),
            prev.roles.get(role),
            blockers,
            scaling=(scaling or {}).get(role),
        )
        state = states[role]
        scaler_now = spec.scaler(role)
        if state.status.scaler != scaler_now:
            states[role] = _RoleState(
                state.status.model_copy(update={"scaler": scaler_now}),
                state.done,
                state.stall,
                state.progress,
            )
    stalls = [s.stall for s in states.values() if s.stall is not None]
    pending = [s.progress for s in states.values() if not s.done]
    ready = not pending and not stalls
    conds = prev.conditions
    if stalls:
        reason, _ = stalls[0]
        message = "; ".join(m for _, m in stalls)
        conditions = [
            _condition(conds, READY, "False", reason, message, generation, now),
            _condition(conds, RECONCILING, "False", "Stalled", "", generation, now),
            _condition(conds, STALLED, "True", reason, message, generation, now),
        ]
    elif pending:
        message = "; ".join(pending)
        conditions = [
            _condition(conds, READY, "False", "RollingOut", message, generation, now),
            _condition(conds, RECONCILING, "True", "RollingOut", message, generation, now),
            _condition(conds, STALLED, "False", "Progressing", "", generation, now),
        ]
    else:
        msg = "all roles ready: " + ", ".join(
            f"{r} {s.status.ready}/{s.status.desired}" for r, s in states.items()
        )
        conditions = [
            _condition(conds, READY, "True", "Ready", msg, generation, now),
            _condition(conds, RECONCILING, "False", "Ready", "", generation, now),
            _condition(conds, STALLED, "False", "Ready", "", generation, now),
        ]
    assert ready == (conditions[0].status == "True")
    degraded = _transport_condition(conds, transport, generation, now)
    if degraded is not None:
        conditions.append(degraded)
    return MultimodalDeploymentStatus(
        observed_generation=generation,
        mode=spec.mode,
        conditions=conditions,
        roles={r: s.status for r, s in states.items()},
        summary={r: f"{s.status.ready}/{s.status.desired}" for r, s in states.items()},
    )


def invalid_spec_status(
    generation: int,
    previous: Mapping[str, Any] | MultimodalDeploymentStatus | None,
    message: str,
    now: datetime,
) -> MultimodalDeploymentStatus:
    """Status for a spec the operator refuses (SpecError -> kopf.PermanentError): Stalled, not Ready."""
    prev = _previous(previous)
    conds = prev.conditions
    return prev.model_copy(
        update={
            "observed_generation": generation,
            "conditions": [
                _condition(conds, READY, "False", "InvalidSpec", message, generation, now),
                _condition(conds, RECONCILING, "False", "InvalidSpec", "", generation, now),
                _condition(conds, STALLED, "True", "InvalidSpec", message, generation, now),
            ],
        }
    )


def status_to_dict(status: MultimodalDeploymentStatus) -> dict[str, Any]:
    """The status as written to the API (camelCase, RFC 3339 times, absent fields left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_changed(
    previous: Mapping[str, Any] | MultimodalDeploymentStatus | None, new: MultimodalDeploymentStatus
) -> bool:
    """Whether `new` differs from what is stored; compares every field (no short-circuit over conditions)."""
    old = status_to_dict(_previous(previous)) if previous is not None else None
    return old != status_to_dict(new)
