"""Status: kstatus polarity, flip-only transition times, blockers, change detection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from triptych_operator.api import parse_spec
from triptych_operator.status import (
    Blocker,
    compute_status,
    invalid_spec_status,
    status_changed,
    status_to_dict,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
T2 = T0 + timedelta(minutes=2)
SPEC = parse_spec(
    {"backend": "reference", "model": {"name": "m"}, "roles": {"encode": {}, "decode": {"replicas": 2}}}
)


def _dep(
    role: str,
    replicas: int,
    ready: int,
    *,
    updated: int | None = None,
    generation: int = 1,
    observed: int = 1,
    conditions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    updated = ready if updated is None else updated
    return {
        "metadata": {"name": f"x-{role}", "generation": generation, "labels": {"triptych.dev/role": role}},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": updated,
            "conditions": conditions or [],
        },
    }


def _all_ready() -> list[dict[str, Any]]:
    return [_dep("frontend", 1, 1), _dep("encode", 1, 1), _dep("decode", 2, 2)]


def _conds(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def test_ready() -> None:
    st = compute_status(SPEC, 3, _all_ready(), None, T0)
    assert _conds(st) == {
        "Ready": ("True", "Ready"),
        "Reconciling": ("False", "Ready"),
        "Stalled": ("False", "Ready"),
    }
    assert st.observed_generation == 3
    assert all(c.observed_generation == 3 for c in st.conditions)
    assert st.summary == {"frontend": "1/1", "encode": "1/1", "decode": "2/2"}
    assert st.mode == "E/PD"
    assert st.roles["decode"].ready == 2


def test_rolling_out_is_reconciling() -> None:
    deps = [_dep("frontend", 1, 1), _dep("encode", 1, 1), _dep("decode", 2, 1, updated=1)]
    st = compute_status(SPEC, 1, deps, None, T0)
    assert _conds(st)["Ready"] == ("False", "RollingOut")
    assert _conds(st)["Reconciling"] == ("True", "RollingOut")
    assert _conds(st)["Stalled"][0] == "False"
    assert st.summary["decode"] == "1/2"


def test_missing_deployment_and_lagging_generation_are_reconciling() -> None:
    deps = [_dep("frontend", 1, 1), _dep("decode", 2, 2, generation=2, observed=1)]
    st = compute_status(SPEC, 1, deps, None, T0)
    assert _conds(st)["Reconciling"][0] == "True"
    assert st.roles["encode"].reason == "Creating"
    assert "not observed" in st.conditions[1].message


@pytest.mark.parametrize(
    ("blocker", "deployment_condition", "reason"),
    [
        (Blocker("decode", "Unschedulable", "0/5 nodes: insufficient nvidia.com/gpu"), None, "Unschedulable"),
        (Blocker("decode", "ErrImagePull", "pull failed"), None, "ErrImagePull"),
        (Blocker("decode", "ImagePullBackOff", "back-off"), None, "ImagePullBackOff"),
        (Blocker("decode", "CrashLoopBackOff", "restarting"), None, "CrashLoopBackOff"),
        (None, {"type": "ReplicaFailure", "status": "True", "message": "quota"}, "ReplicaFailure"),
        (
            None,
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": "slow",
            },
            "ProgressDeadlineExceeded",
        ),
    ],
)
def test_stalled(blocker: Blocker | None, deployment_condition: dict[str, Any] | None, reason: str) -> None:
    deps = [
        _dep("frontend", 1, 1),
        _dep("encode", 1, 1),
        _dep("decode", 2, 0, conditions=[deployment_condition] if deployment_condition else None),
    ]
    st = compute_status(SPEC, 1, deps, None, T0, blockers=[blocker] if blocker else [])
    assert _conds(st) == {
        "Ready": ("False", reason),
        "Reconciling": ("False", "Stalled"),
        "Stalled": ("True", reason),
    }
    assert st.roles["decode"].reason == reason
    assert st.conditions[2].message.startswith("decode: ")


def test_transition_time_changes_only_on_flips() -> None:
    rolling = [_dep("frontend", 1, 1), _dep("encode", 1, 1), _dep("decode", 2, 1, updated=1)]
    s0 = compute_status(SPEC, 1, rolling, None, T0)
    # Same state later, different message: times kept.
    rolling2 = [_dep("frontend", 1, 1), _dep("encode", 1, 1), _dep("decode", 2, 1, updated=2)]
    s1 = compute_status(SPEC, 1, rolling2, status_to_dict(s0), T1)
    assert all(c.last_transition_time == T0 for c in s1.conditions)
    # Ready flips True, Reconciling flips False; Stalled stays False: its time is kept.
    s2 = compute_status(SPEC, 1, _all_ready(), status_to_dict(s1), T2)
    times = {c.type: c.last_transition_time for c in s2.conditions}
    assert times == {"Ready": T2, "Reconciling": T2, "Stalled": T0}


def test_status_changed() -> None:
    s0 = compute_status(SPEC, 1, _all_ready(), None, T0)
    stored = status_to_dict(s0)
    assert not status_changed(stored, compute_status(SPEC, 1, _all_ready(), stored, T1))
    assert status_changed(None, s0)
    # A change in the last condition only (Stalled's message) is still a change: no short-circuit.
    blocked = compute_status(
        SPEC, 1, _all_ready(), stored, T1, blockers=[Blocker("encode", "Unschedulable", "a")]
    )
    stored_b = status_to_dict(blocked)
    again = compute_status(
        SPEC, 1, _all_ready(), stored_b, T2, blockers=[Blocker("encode", "Unschedulable", "b")]
    )
    assert status_changed(stored_b, again)
    assert [c.last_transition_time for c in again.conditions] == [
        c.last_transition_time for c in blocked.conditions
    ]


def test_autoscaler_fields_are_kept() -> None:
    prev = status_to_dict(compute_status(SPEC, 1, _all_ready(), None, T0))
    prev["roles"]["decode"].update(
        {"queueDepth": 7, "cacheUtilization": 40, "lastScaleTime": "2026-01-01T00:00:00Z"}
    )
    st = compute_status(SPEC, 2, _all_ready(), prev, T1)
    assert (st.roles["decode"].queue_depth, st.roles["decode"].cache_utilization) == (7, 40)
    assert st.roles["decode"].last_scale_time == T0


def test_invalid_spec_status() -> None:
    st = invalid_spec_status(4, None, "spec.roles.decode.gpus: must equal ...", T0)
    assert _conds(st) == {
        "Ready": ("False", "InvalidSpec"),
        "Reconciling": ("False", "InvalidSpec"),
        "Stalled": ("True", "InvalidSpec"),
    }
    assert st.observed_generation == 4
