"""What one round trains: its stages, and how each face enters the loss in each stage.

A curriculum policy (:mod:`pipnet_core.curriculum`) describes a round as a sequence of
:class:`Stage` objects, and the training step of the flows executes them in order without knowing
which schedule it runs. A stage says

* which faces train: people's labels (``human`` and ``corrected``), the pseudo-labels, or both,
  each group with its :class:`Task` (level, head set, regression switch, shrink exponent p, weight);
* where its weights start: fresh, the round's warm-start choice, round k-1's pretraining checkpoint
  (STLD's pretraining lineage) or the previous stage of the same round;
* how long it trains relative to the configured epochs (STLD's short pretraining updates: E // 5,
  at least 2, with the milestones divided alike, ``lib/train_stld.py`` of jhb86253817/STLD);
* whether a small human set is repeated up to a number of samples (STLD's ``os_num``);
* which file of the round folder it writes (``model.pt`` for the round's model).

The paper's STC and pipstc's own schedules are one stage (``train``); STLD's self-training rounds are
``pretrain`` (pseudo-labels only, PIPNet's full task) then ``fine-tune`` (docs/algorithm.md section 6).
NumPy only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipnet_core.targets import HEAD_AUX, HEAD_MAIN, LEVEL_MASKS, SampleTasks

__all__ = [
    "HEADS",
    "HUMAN_SOURCES",
    "STARTS",
    "Stage",
    "StageSamples",
    "Task",
    "describe_stage",
    "stage_samples",
]

HEADS = {"main": HEAD_MAIN, "aux": HEAD_AUX}
HUMAN_SOURCES = ("human", "corrected")  # people's labels; everything else a round trains on is a pseudo-label
# Where a stage's weights start (see Stage.start).
STARTS = ("fresh", "round", "pretrain", "previous")


@dataclass(frozen=True)
class Task:
    """How one group of faces supervises the model in a stage.

    Attributes:
        level: Which score map: ``std`` (the fine map, with offsets and neighbours), ``cls2`` /
            ``cls3`` (STC's coarse maps), ``cls1``; None: each pseudo-label's own level, set when
            it was made (the paper's and the confidence schedule).
        head: ``main`` (the official heads, the only ones prediction uses) or ``aux`` (the second
            head set that STLD feeds with pseudo-labels only).
        regress: Supervise offsets and neighbours; None: as the level says (``std`` only). STLD's
            shrink head regresses with a coarse score map.
        shrink: Exponent p of the regression loss ``|e|^p / p``; 1 is PIPNet's L1.
        weight: Factor of the group's loss terms.
    """

    level: str | None = "std"
    head: str = "main"
    regress: bool | None = None
    shrink: float = 1.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.level is not None and self.level not in LEVEL_MASKS:
            raise ValueError(f"Task.level {self.level!r} is not a level; use one of {sorted(LEVEL_MASKS)} or None")
        if self.head not in HEADS:
            raise ValueError(f"Task.head {self.head!r}: use one of {sorted(HEADS)}")
        if not self.shrink >= 1:
            raise ValueError(f"Task.shrink (the exponent p) must be >= 1, got {self.shrink}")
        if not self.weight >= 0:
            raise ValueError(f"Task.weight must be >= 0, got {self.weight}")

    def regresses(self, level: str) -> bool:
        """Whether a face of ``level`` supervises offsets and neighbours under this task."""
        return LEVEL_MASKS[level][1] > 0 if self.regress is None else bool(self.regress)


@dataclass(frozen=True)
class Stage:
    """One training run of a round.

    Attributes:
        name: Shown in logs and the report (``train``, ``pretrain``, ``fine-tune``).
        human: Task of people's labels; None leaves them out of this stage.
        pseudo: Task of the pseudo-labels; None leaves them out.
        start: ``fresh`` (new weights, or the configured ImageNet file), ``round`` (the round's
            warm-start choice: round k-1's model or fresh), ``pretrain`` (round k-1's pretraining
            checkpoint, the pretraining lineage) or ``previous`` (where the previous stage of this
            round ended).
        epoch_divisor: The stage trains ``max(min_epochs, epochs // epoch_divisor)`` epochs with the
            milestones divided alike.
        min_epochs: Lower bound of the stage's epochs.
        oversample: Repeat people's labels (cyclically, then truncated) up to this many samples when
            there are fewer; 0 leaves them as they are.
        checkpoint: File of the round folder the stage writes (resumable); the last stage writes
            ``model.pt``, the round's model.
    """

    name: str
    human: Task | None = field(default_factory=Task)
    pseudo: Task | None = None
    start: str = "round"
    epoch_divisor: int = 1
    min_epochs: int = 1
    oversample: int = 0
    checkpoint: str = "model.pt"

    def __post_init__(self) -> None:
        if self.start not in STARTS:
            raise ValueError(f"Stage.start {self.start!r}: use one of {STARTS}")
        if self.human is None and self.pseudo is None:
            raise ValueError(f"stage {self.name!r} trains on nothing: give a human or a pseudo task")
        if self.epoch_divisor < 1 or self.min_epochs < 1 or self.oversample < 0:
            raise ValueError(f"stage {self.name!r}: epoch_divisor and min_epochs must be >= 1, oversample >= 0")

    @property
    def uses_aux(self) -> bool:
        """Whether the stage feeds the second head set (its model needs ``aux_heads``)."""
        return any(t is not None and t.head == "aux" for t in (self.human, self.pseudo))

    def epochs(self, epochs: int, milestones: Sequence[int]) -> tuple[int, tuple[int, ...]]:
        """The stage's epochs and LR milestones from the configured ones.

        STLD's later pretraining updates run ``num_epochs // 5`` epochs with milestones ``s // 5``
        (``lib/train_stld.py``); milestones that fall to 0 or past the end are dropped, and two that
        fall on the same epoch count once (MultiStepLR would apply the factor twice there).
        """
        n = max(self.min_epochs, epochs // self.epoch_divisor)
        if self.epoch_divisor == 1 and n == epochs:
            return n, tuple(milestones)  # a full-length stage trains exactly as configured
        kept = sorted({m // self.epoch_divisor for m in milestones if 1 <= m // self.epoch_divisor < n})
        return n, tuple(kept)


@dataclass(frozen=True)
class StageSamples:
    """The faces of a round's training set that train in one stage.

    Attributes:
        index: (M',) rows of the training set, people's labels first; a row repeats when the human
            set is oversampled.
        levels: M' levels.
        tasks: Per-sample head set, regression switch, shrink exponent and weight.
        groups: One entry per (source, level, head, p, weight) with its sample and face counts,
            for the report.
    """

    index: np.ndarray
    levels: list[str]
    tasks: SampleTasks
    groups: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.index)


def _oversampled(rows: np.ndarray, count: int) -> np.ndarray:
    # The release repeats the labelled list ceil(os_num / n) times and cuts it to os_num (train_stld.py).
    return np.resize(rows, count) if 0 < len(rows) < count else rows


def stage_samples(stage: Stage, sources: Sequence[str], levels: Sequence[str]) -> StageSamples:
    """Which faces of a round's training set train in ``stage``, and how each enters the loss.

    Args:
        stage: The stage.
        sources: M label sources of the training set (``human``, ``corrected``, ``pseudo``).
        levels: M levels (``std`` for people's labels; the pseudo-label's level otherwise).
    """
    src = np.asarray(sources, dtype=object)
    lv = np.asarray(levels, dtype=object)
    is_human = np.isin(src, HUMAN_SOURCES)
    parts = []
    for kind, task, rows in (("human", stage.human, np.flatnonzero(is_human)),
                             ("pseudo", stage.pseudo, np.flatnonzero(~is_human))):  # fmt: skip
        if task is None or not len(rows):
            continue
        if kind == "human":
            rows = _oversampled(rows, stage.oversample)
        parts.append((kind, task, rows))
    index = np.concatenate([rows for _, _, rows in parts]) if parts else np.zeros(0, np.int64)
    chosen: list[str] = []
    head, regress, shrink, weight, groups = [], [], [], [], []
    for kind, task, rows in parts:
        own = [str(v) for v in lv[rows]]
        used = own if task.level is None else [task.level] * len(rows)
        chosen += used
        head += [HEADS[task.head]] * len(rows)
        regress += [task.regresses(level) for level in used]
        shrink += [task.shrink] * len(rows)
        weight += [task.weight] * len(rows)
        faces = Counter(used)
        distinct = {level: len(set(rows[np.asarray(used) == level].tolist())) for level in faces}
        groups += [{"source": kind, "level": level, "head": task.head, "shrink": task.shrink, "weight": task.weight,
                    "samples": n, "faces": distinct[level]} for level, n in sorted(faces.items())]  # fmt: skip
    tasks = SampleTasks(np.asarray(head, np.int64), np.asarray(regress, bool), np.asarray(shrink, np.float32),
                        np.asarray(weight, np.float32))  # fmt: skip
    return StageSamples(index=index.astype(np.int64), levels=chosen, tasks=tasks, groups=groups)


def _group_text(g: dict[str, Any]) -> str:
    how = [g["level"] if g["head"] == "main" else f"aux {g['level']}"]
    if g["shrink"] != 1:
        how.append(f"p {g['shrink']:g}")
    if g["weight"] != 1:
        how.append(f"w {g['weight']:g}")
    repeated = f", {g['faces']} faces repeated" if g["samples"] != g["faces"] else ""
    return f"{g['samples']} {g['source']} ({', '.join(how)}{repeated})"


def describe_stage(name: str, epochs: int, groups: Sequence[dict[str, Any]]) -> str:
    """One line for logs and the report, e.g. ``fine-tune 60 epochs: 300 human (std), 600 pseudo (aux cls3,
    p 2.4, w 0.1)``."""
    return f"{name} {epochs} epochs: " + ", ".join(_group_text(g) for g in groups)
