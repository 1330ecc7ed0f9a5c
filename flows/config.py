"""Configuration of an STC run: one frozen dataclass, resolved and written beside every round.

Defaults follow the official PIPNet GSSL setting (PIPNET_SPEC.md sections 9 and 12): ResNet-18,
256 input, stride 32, 10 neighbours, 60 epochs, batch 16, Adam 1e-4, the 1.3 landmark-box crop.
``demo()`` and ``tiny()`` are smaller configurations of the same code for this 2-core machine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["STCConfig"]


@dataclass(frozen=True)
class STCConfig:
    # --- model and training (PIPNET_SPEC.md section 9)
    backbone: str = "resnet18"
    base_width: int = 64  # 64 = the real ResNet; smaller widths are for demos and tests
    input_size: int = 256  # the official crop size
    net_stride: int = 32  # 8x8 grid at 256: the paper's setting
    num_nb: int = 10  # neighbours per landmark (NRM)
    epochs: int = 60  # per round, retrained from scratch in the paper
    batch_size: int = 16
    lr: float = 1e-4
    milestones: tuple[int, ...] = (30, 50)
    num_workers: int = 2  # data loader workers; 2 cores here
    imagenet_weights: str | None = None  # a torchvision-format ResNet state dict file; nothing is downloaded
    crop_scale: float = 1.3  # GSSL 300W crop: landmark box x1.3 (PIPNET_SPEC.md section 7)
    seed: int = 0
    # --- the curriculum (pipnet_core.curriculum)
    schedule: str = "paper"  # paper | confidence | plain
    warm_start: bool | None = None  # None: the schedule's own choice (paper: from scratch)
    std_below: float = 0.05  # confidence schedule thresholds, predicted NME
    cls2_below: float = 0.10
    cls3_below: float = 0.15
    # --- pool labeling
    shard_size: int = 256  # faces per shard task
    max_workers: int = 2  # bounded thread runner: the default one is unbounded (PREFECT.md section 3)
    dask_address: str | None = None  # an existing Dask scheduler, e.g. tcp://10.0.0.5:8786
    backend: str = "onnx"  # ONNX Runtime: ~90% of the FMA peak vs ~50% for torch eager (CPU_SPEED.md)
    flip_tta: bool = True  # flip disagreement is one of the confidence signals
    # --- review
    review_budget: float = 0.05  # share of the pool sent to people per round
    review_project: str = "pipstc review"

    @classmethod
    def demo(cls, **overrides: Any) -> STCConfig:
        """The README demo: a narrow ResNet-18 at 128 px (grid 8 with stride 16) so three rounds fit minutes.

        lr 1e-3 rather than the official 1e-4: from random init (no ImageNet file here) with 30 epochs
        instead of 60, 1e-4 barely moves a small net (measured in tests/unit/test_train.py's overfit test).
        """
        base = dict(
            base_width=16, input_size=128, net_stride=16, epochs=30, milestones=(20, 27), batch_size=16, lr=1e-3
        )
        return dataclasses.replace(cls(), **(base | overrides))

    @classmethod
    def tiny(cls, **overrides: Any) -> STCConfig:
        """Tests: seconds per round."""
        base = dict(
            base_width=8, input_size=64, net_stride=16, epochs=2, milestones=(1,), batch_size=8, lr=1e-3,
            num_workers=0, shard_size=16, flip_tta=False, backend="torch",
        )  # fmt: skip
        return dataclasses.replace(cls(), **(base | overrides))

    def replace(self, **overrides: Any) -> STCConfig:
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> STCConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown STC config field(s) {unknown}; known fields: {sorted(known)}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
