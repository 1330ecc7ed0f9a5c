"""Curriculum policies: which task (level) each pseudo-label supervises in a round.

The paper's STC (PIPNet, Jin, Liao & Shao; official ``train_gssl.py``, docs/algorithm.md section 4.4)
gives every pseudo-label of round r the same task: ``[cls3, cls2, std, std, std]`` for rounds 1..5,
retraining from scratch each round. pipstc adds a confidence-routed policy (docs/algorithm.md section 5.3):
each pseudo-label is routed by its own predicted error — sure -> ``std`` (full task), unsure ->
``cls2``/``cls3`` (coarse maps only), very unsure -> ``review`` (out of training until a person fixes
it). Plain self-training (every pseudo-label at ``std``) is kept for comparison.

A policy is a plain object with ``levels(round, predicted_nme) -> (M,) array of str``, so further
schedules (e.g. STLD, docs/algorithm.md section 6) plug in without touching the loop. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "PAPER_TASKS",
    "ConfidenceRouted",
    "CurriculumPolicy",
    "PaperSchedule",
    "PlainSelfTraining",
    "create_policy",
]

# Official task list with curriculum (train_gssl.py): rounds 1..5.
PAPER_TASKS = ("cls3", "cls2", "std", "std", "std")


class CurriculumPolicy(Protocol):
    name: str
    reinitialise: bool  # retrain from scratch each round (the paper) or fine-tune

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        """Level of each pseudo-label used in training round ``round`` (>= 1); predicted_nme is (M,)."""
        ...


@dataclass(frozen=True)
class PaperSchedule:
    """The paper's STC: one task per round, no filtering; rounds past the list stay ``std``."""

    name: str = "paper"
    reinitialise: bool = True  # the author re-initialises every round (issue #49)

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        if round < 1:
            raise ValueError(f"pseudo-labels are used from round 1 on, got round {round}")
        task = PAPER_TASKS[round - 1] if round <= len(PAPER_TASKS) else "std"
        return np.full(len(predicted_nme), task, dtype=object)


@dataclass(frozen=True)
class PlainSelfTraining:
    """Every pseudo-label at the full task (the paper's ``_wocc`` baseline)."""

    name: str = "plain"
    reinitialise: bool = True

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        return np.full(len(predicted_nme), "std", dtype=object)


@dataclass(frozen=True)
class ConfidenceRouted:
    """Route each pseudo-label by its own predicted NME.

    Thresholds are in NME units (inter-ocular for 300W). Defaults: 0.05 is about where a 300W model's
    typical face lies, so below it the full task is trusted; 2x that still lands in the right 4x4 cell
    (64 px at 256 input) for most landmarks; past 0.15 the face is a likely failure (FR uses 0.1) and
    goes to people instead.
    """

    name: str = "confidence"
    std_below: float = 0.05
    cls2_below: float = 0.10
    cls3_below: float = 0.15
    reinitialise: bool = False  # scheduled jobs fine-tune from the last round by default

    def __post_init__(self) -> None:
        if not 0 < self.std_below <= self.cls2_below <= self.cls3_below:
            raise ValueError(
                "ConfidenceRouted thresholds must satisfy 0 < std_below <= cls2_below <= cls3_below, got "
                f"{self.std_below}, {self.cls2_below}, {self.cls3_below}"
            )

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        p = np.asarray(predicted_nme, dtype=np.float64)
        out = np.full(len(p), "review", dtype=object)
        out[p < self.cls3_below] = "cls3"
        out[p < self.cls2_below] = "cls2"
        out[p < self.std_below] = "std"
        out[~np.isfinite(p)] = "review"
        return out


def create_policy(name: str, **kwargs: float | bool) -> CurriculumPolicy:
    """``paper`` | ``confidence`` | ``plain`` (keyword arguments override the policy's fields)."""
    table = {"paper": PaperSchedule, "confidence": ConfidenceRouted, "plain": PlainSelfTraining}
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(table)}")
    return table[name](**kwargs)  # type: ignore[arg-type]
