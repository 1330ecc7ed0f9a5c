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
