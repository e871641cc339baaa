"""Peering priorities: a tier is a band of PRIORITY_SPREAD ranks, so any peer of a higher tier (a developer's
`make run`) outranks every replica of a lower one, and replicas of one tier rarely tie."""

from __future__ import annotations

import pytest
from triptych_operator.main import PRIORITY_SPREAD, peering_priority


def test_any_rank_of_a_higher_tier_outranks_every_rank_of_a_lower_one() -> None:
    assert peering_priority(1, 0) > peering_priority(0, PRIORITY_SPREAD - 1)
    assert peering_priority(2, 0) > peering_priority(1, PRIORITY_SPREAD - 1)


def test_within_a_tier_the_rank_decides() -> None:
    assert peering_priority(0, 7) > peering_priority(0, 6)
    assert peering_priority(0, 0) == 0


def test_ties_between_two_replicas_are_rare() -> None:
    # Two replicas tie (kopf then pauses both) with probability 1 / PRIORITY_SPREAD.
    assert PRIORITY_SPREAD >= 1_000_000


@pytest.mark.parametrize("rank", [-1, PRIORITY_SPREAD])
def test_a_rank_outside_the_band_is_refused(rank: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        peering_priority(0, rank)
