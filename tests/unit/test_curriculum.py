"""Curriculum policies: the paper's task list and pipstc's confidence routing."""

from __future__ import annotations

import numpy as np
import pytest

from pipnet_core.curriculum import PAPER_TASKS, ConfidenceRouted, create_policy


def test_paper_schedule_gives_every_pseudo_label_the_rounds_task() -> None:
    policy = create_policy("paper")
    nme = np.array([0.01, 0.5, np.nan])
    assert [policy.levels(r, nme)[0] for r in range(1, 6)] == list(PAPER_TASKS) == ["cls3", "cls2", "std", "std", "std"]
    assert set(policy.levels(2, nme)) == {"cls2"}  # no filtering: every face keeps the round's task
    assert set(policy.levels(9, nme)) == {"std"}
    assert policy.reinitialise
    with pytest.raises(ValueError, match="round 1"):
        policy.levels(0, nme)


def test_confidence_routing_by_predicted_error() -> None:
    policy = ConfidenceRouted(std_below=0.05, cls2_below=0.1, cls3_below=0.15)
    levels = policy.levels(1, np.array([0.01, 0.07, 0.12, 0.3, np.nan]))
    assert levels.tolist() == ["std", "cls2", "cls3", "review", "review"]
    assert not policy.reinitialise


def test_bad_thresholds_and_names_are_refused() -> None:
    with pytest.raises(ValueError, match="std_below <= cls2_below"):
        ConfidenceRouted(std_below=0.2, cls2_below=0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        create_policy("nope")
    assert set(create_policy("plain").levels(1, np.zeros(3))) == {"std"}


def test_routing_by_round0_shares_keeps_the_shares_and_the_order() -> None:
    from pipnet_core.curriculum import level_shares, levels_by_shares

    first = np.array(["std"] * 5 + ["cls2"] * 3 + ["cls3"] * 1 + ["review"] * 1, dtype=object)
    shares = level_shares(first)
    assert shares == {"std": 0.5, "cls2": 0.3, "cls3": 0.1}
    # an inflated model: every face now looks sure (thresholds would put all ten at std)
    nme = np.array([0.009, 0.001, 0.004, 0.010, 0.002, 0.008, 0.003, 0.006, 0.005, 0.007])
    levels = levels_by_shares(nme, shares)
    assert ConfidenceRouted().levels(2, nme).tolist() == ["std"] * 10
    assert (levels == "std").sum() == 5 and (levels == "cls2").sum() == 3 and (levels == "cls3").sum() == 1
    order = np.argsort(nme)
    assert levels[order].tolist() == ["std"] * 5 + ["cls2"] * 3 + ["cls3", "review"]  # rank decides, not scale
    with_nan = levels_by_shares(np.array([np.nan, 0.2, 0.1, 0.3]), {"std": 0.5, "cls2": 0.5, "cls3": 0.0})
    assert with_nan.tolist() == ["review", "std", "std", "cls2"]  # a non-finite prediction never trains
    with pytest.raises(ValueError, match="cls2"):
        levels_by_shares(nme, {"std": 0.5, "cls2": 1.5})
