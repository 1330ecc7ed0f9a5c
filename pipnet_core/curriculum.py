"""Curriculum policies: which task (level) each pseudo-label supervises in a round, and how a round trains.

The paper's STC (PIPNet, Jin, Liao & Shao; official ``train_gssl.py``, docs/algorithm.md section 4.4)
gives every pseudo-label of round r the same task: ``[cls3, cls2, std, std, std]`` for rounds 1..5,
retraining from scratch each round. pipstc adds a confidence-routed policy (docs/algorithm.md section 5.3):
each pseudo-label is routed by its own predicted error — sure -> ``std`` (full task), unsure ->
``cls2``/``cls3`` (coarse maps only), very unsure -> ``review`` (out of training until a person fixes
it). Plain self-training (every pseudo-label at ``std``) is kept for comparison.

STLD (Jin, Che & Chen, "Rethinking Self-training for Semi-supervised Landmark Detection: A
Selection-free Approach", TIP 2024; code jhb86253817/STLD, ``lib/train_stld.py``) is the third
schedule: no selection, pseudo pretraining, then "shrink regression" of the pseudo-labels on a second
head set from coarse to fine (docs/algorithm.md section 6).

A policy is a plain object with

* ``levels(round, predicted_nme) -> (M,) array of str``: the level each new pseudo-label is stored
  with (``review`` keeps it out of training until a person fixes it);
* ``stages(round, lineage) -> tuple[Stage, ...]``: how round ``round`` trains
  (:mod:`pipnet_core.stages`): which faces, on which head set, with which loss, from which weights;
  ``lineage`` says whether round ``round - 1`` left a pretraining checkpoint to continue;
* ``average_flip``: whether a pseudo-label averages the flip test-time views (when flip TTA runs);
  if not, the label is the plain main-head prediction and flip only feeds the confidence;
* ``reinitialise`` (what a ``round`` start does unless the config says) and ``rounds`` (the
  schedule's own number of self-training rounds).

The training loop executes what a policy describes and never asks for its name. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipnet_core.stages import Stage, Task

__all__ = [
    "PAPER_TASKS",
    "STLD_SCHEDULES",
    "ConfidenceRouted",
    "CurriculumPolicy",
    "LEVEL_ORDER",
    "PaperSchedule",
    "PlainSelfTraining",
    "STLDSchedule",
    "create_policy",
    "level_shares",
    "levels_by_shares",
]

# Official task list with curriculum (train_gssl.py): rounds 1..5.
PAPER_TASKS = ("cls3", "cls2", "std", "std", "std")


class CurriculumPolicy(Protocol):
    name: str
    reinitialise: bool  # retrain from scratch each round (the paper) or fine-tune
    average_flip: bool  # pseudo-labels average the flip-TTA views; False: the plain main-head prediction

    @property
    def rounds(self) -> int:
        """Self-training rounds of the schedule (after round 0)."""
        ...

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        """Level of each pseudo-label used in training round ``round`` (>= 1); predicted_nme is (M,)."""
        ...

    def stages(self, round: int, lineage: bool = False) -> tuple[Stage, ...]:
        """How round ``round`` trains; ``lineage``: round - 1 left a pretraining checkpoint."""
        ...


class _OneStage:
    """One training per round on people's labels plus the pseudo-labels at their stored levels."""

    average_flip = True  # the label is the mean of the two flip views when flip TTA runs
    rounds = len(PAPER_TASKS)

    def stages(self, round: int, lineage: bool = False) -> tuple[Stage, ...]:
        # "round": from scratch or from round k-1's model, as the config's warm_start (or reinitialise) says
        return (Stage("train", human=Task(), pseudo=Task(level=None) if round >= 1 else None, start="round"),)


@dataclass(frozen=True)
class PaperSchedule(_OneStage):
    """The paper's STC: one task per round, no filtering; rounds past the list stay ``std``."""

    name: str = "paper"
    reinitialise: bool = True  # the author re-initialises every round (issue #49)

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        if round < 1:
            raise ValueError(f"pseudo-labels are used from round 1 on, got round {round}")
        task = PAPER_TASKS[round - 1] if round <= len(PAPER_TASKS) else "std"
        return np.full(len(predicted_nme), task, dtype=object)


@dataclass(frozen=True)
class PlainSelfTraining(_OneStage):
    """Every pseudo-label at the full task (the paper's ``_wocc`` baseline)."""

    name: str = "plain"
    reinitialise: bool = True

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        return np.full(len(predicted_nme), "std", dtype=object)


@dataclass(frozen=True)
class ConfidenceRouted(_OneStage):
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


# Fine-tuning task of the pseudo-labels in self-training rounds 1, 2, ... (None: people's labels only).
# "full" is what the released code runs (lib/train_stld.py, shrink_curri [1, 2.4, 1.6, 1, 1] and
# shrink_weight_curri [1, 0.1, 0.1, 1, 1] as the code indexes them: p by the round that made the label,
# the weight by the current round, so round 2 runs p 2.4 at w 0.1, round 3 p 1.6 at w 1, and round 4's
# p = 1 sends the pseudo-labels to the main output with plain L1). On PIPNet the exponent acts on the
# offsets and neighbours, and STC's coarse score maps stand in for STLD's wider Gaussians (2x2 with
# p 2.4, 4x4 with p 1.6; docs/algorithm.md section 6.2). "cpu" is the three-round schedule sized for a
# 2-core machine (adapted, not from the paper): pretraining + fine-tuning, one coarse shrink round
# (p 2.4, w 0.1), then the fine round (main heads, p 1, w 1).
_SHRINK_COARSE = Task(level="cls3", head="aux", regress=True, shrink=2.4, weight=0.1)
_SHRINK_MIDDLE = Task(level="cls2", head="aux", regress=True, shrink=1.6, weight=1.0)
_SHRINK_FINE = Task(level="std", head="main", shrink=1.0, weight=1.0)
STLD_SCHEDULES: dict[str, tuple[Task | None, ...]] = {
    "cpu": (None, _SHRINK_COARSE, _SHRINK_FINE),
    "full": (None, _SHRINK_COARSE, _SHRINK_MIDDLE, _SHRINK_FINE),
}


@dataclass(frozen=True)
class STLDSchedule:
    """STLD ported to PIPNet: every pseudo-label, pseudo pretraining, then shrink regression.

    Round 0 is supervised. In round r >= 1 (``lib/train_stld.py``):

    1. ``pretrain`` (``pretrain.pt``): PIPNet's full task (``std``, main heads) on the pseudo-labels
       only; in round 1 from fresh weights for E epochs, later from round r-1's pretraining
       checkpoint for E // 5 epochs (at least ``min_pretrain_epochs``) with a fresh optimiser;
    2. ``fine-tune`` (``model.pt``) from those weights for E epochs: people's labels on the main
       heads, plus the pseudo-labels with the round's task from :data:`STLD_SCHEDULES` (none in
       round 1; the second head set with a coarse score map and ``|e|^p / p``; in the last round the
       main heads with PIPNet's loss).

    People's labels are repeated up to ``oversample`` samples when there are fewer (the release's
    ``os_num``), except in the schedule's last round. Rounds past the schedule repeat its last round.

    Attributes:
        schedule: ``cpu`` (three rounds) or ``full`` (the release's four), see :data:`STLD_SCHEDULES`.
        oversample: ``os_num``: 100 in every ResNet-18 config of the release (1000 for HRNet).
        pretrain_divisor: Later pretraining updates run E // this epochs (5 in the release).
        min_pretrain_epochs: At least this many (2: E // 5 of a CPU-sized E would be 1 or 0).
    """

    name: str = "stld"
    schedule: str = "cpu"
    oversample: int = 100
    pretrain_divisor: int = 5
    min_pretrain_epochs: int = 2
    reinitialise: bool = True  # no stage continues from round k-1's model: fine-tuning starts from pretraining
    average_flip: bool = False  # STLD labels with one plain forward pass; flip only feeds the confidence

    def __post_init__(self) -> None:
        if self.schedule not in STLD_SCHEDULES:
            raise ValueError(f"unknown STLD schedule {self.schedule!r}: use one of {', '.join(STLD_SCHEDULES)}")
        if self.oversample < 0 or self.pretrain_divisor < 1 or self.min_pretrain_epochs < 1:
            raise ValueError("STLD: oversample must be >= 0, pretrain_divisor and min_pretrain_epochs >= 1")

    @property
    def rounds(self) -> int:
        return len(STLD_SCHEDULES[self.schedule])

    def levels(self, round: int, predicted_nme: np.ndarray) -> np.ndarray:
        """No selection: every pseudo-label is kept at the full task (its use is decided by the stages)."""
        return np.full(len(predicted_nme), "std", dtype=object)

    def fine_tune_task(self, round: int) -> Task | None:
        """The pseudo-labels' task when fine-tuning in round ``round`` >= 1 (None: not used)."""
        table = STLD_SCHEDULES[self.schedule]
        return table[min(round, len(table)) - 1]

    def stages(self, round: int, lineage: bool = False) -> tuple[Stage, ...]:
        if round < 0:
            raise ValueError(f"rounds start at 0, got {round}")
        if round == 0:
            return (Stage("train", human=Task(), start="fresh", oversample=self.oversample),)
        # Without a lineage to continue (round 1, or a store that ran another schedule before) the
        # pretraining starts one: fresh weights and the full E epochs.
        pretrain = Stage("pretrain", human=None, pseudo=Task(level="std"), start="pretrain" if lineage else "fresh",
                         epoch_divisor=self.pretrain_divisor if lineage else 1,
                         min_epochs=self.min_pretrain_epochs if lineage else 1, checkpoint="pretrain.pt")  # fmt: skip
        last = round >= self.rounds
        fine_tune = Stage("fine-tune", human=Task(), pseudo=self.fine_tune_task(round), start="previous",
                          oversample=0 if last else self.oversample)  # fmt: skip
        return (pretrain, fine_tune)


LEVEL_ORDER = ("std", "cls2", "cls3")  # most trusted first; the rest goes to ``review``


def level_shares(levels: np.ndarray) -> dict[str, float]:
    """The share of faces at each training level (``std``, ``cls2``, ``cls3``) of a set of routed pseudo-labels."""
    lv = np.asarray(levels, dtype=object)
    n = max(len(lv), 1)
    return {name: float(np.sum(lv == name)) / n for name in LEVEL_ORDER}


def levels_by_shares(predicted_nme: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """Route by rank instead of by threshold: the lowest predicted NMEs fill ``std`` up to its share, then ``cls2``,
    then ``cls3``; the rest (and every non-finite prediction) goes to ``review``.

    pipstc's remedy for confidence inflated on faces the model has trained on (bench/RESULTS.md, issue 13):
    from round 1 on the model has seen the pool through its own pseudo-labels, so its predicted NME there
    is lower than its real NME and fixed thresholds promote more and more faces to ``std``. The shares are
    taken from the one labeling whose model had not seen the pool (round 0's); ranks keep what the
    confidence still knows (which faces are worse than which) without trusting its scale. Ties keep the
    input order (a stable sort), so the result is deterministic.
    """
    p = np.asarray(predicted_nme, dtype=np.float64)
    out = np.full(len(p), "review", dtype=object)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    start = 0
    total = 0.0
    for name in LEVEL_ORDER:
        share = float(shares.get(name, 0.0))
        if not 0 <= share <= 1:
            raise ValueError(f"level share {name}={share!r}: must be in [0, 1]")
        total += share
        stop = min(len(order), int(round(total * len(p))))
        out[order[start:stop]] = name
        start = max(start, stop)
    return out


def create_policy(name: str, **kwargs: float | bool | str) -> CurriculumPolicy:
    """``paper`` | ``confidence`` | ``plain`` | ``stld`` (keyword arguments override the policy's fields)."""
    table = {"paper": PaperSchedule, "confidence": ConfidenceRouted, "plain": PlainSelfTraining, "stld": STLDSchedule}
    if name not in table:
        raise ValueError(f"unknown schedule {name!r}: use one of {', '.join(table)}")
    return table[name](**kwargs)  # type: ignore[arg-type]
