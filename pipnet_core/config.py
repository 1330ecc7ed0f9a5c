"""Training settings of PIPNet as one frozen dataclass, importable without torch.

The defaults are the official ones (PIPNet, ``lib/train.py`` and the experiment configs of
jhb86253817/PIPNet; docs/algorithm.md section 2.10). :mod:`pipnet_core.train` trains with it, and the
round config of the flows (``flows.config.STCConfig``) composes it, so every training setting can be
set per round and lands in the round's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from pipnet_core.augment import AugmentConfig

__all__ = ["PRECISIONS", "TrainConfig"]

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults are the official PIPNet ones (docs/algorithm.md section 2.10)."""

    epochs: int = 60  # official; the demo and tests use far fewer
    batch_size: int = 16  # official, per process under DDP
    lr: float = 1e-4  # Adam, official
    milestones: tuple[int, ...] = (30, 50)  # MultiStepLR epochs, official
    gamma: float = 0.1  # LR factor at each milestone, official
    input_size: int = 256  # official crop side; must be a multiple of net_stride
    net_stride: int = 32  # official: an 8x8 grid at 256
    num_nb: int = 10  # C, neighbours per landmark, official
    backbone: str = "resnet18"  # the "lightweight" PIPNet of the paper
    base_width: int = 64  # 64 is the real ResNet; smaller only for tests and demos
    aux_heads: bool = False  # STLD's second head set (PIPNet(aux_heads=True)); set per stage by the curriculum
    cls_weight: float = 10.0  # official score weight at S = 8 (docs/algorithm.md section 2.8)
    reg_weight: float = 1.0  # official regression weight
    weight_decay: float | None = None  # None: the official rule, 0 from pretrained weights, 5e-4 from scratch
    imagenet_weights: str | None = None  # torchvision-format ResNet file; None: random init (nothing downloaded)
    init_from: str | None = None  # warm start: a pipstc checkpoint whose weights (and neighbour table) to start from
    meanface: str = "scheme"  # neighbour topology from the scheme's mean face, or "data" (mean of the labels)
    seed: int = 0  # seeds torch, numpy, random and the per-sample augmentation
    # Loader processes; None: auto (resolved_num_workers). Augmenting a crop costs ~1 ms against ~65 ms of
    # training step on 2 CPU cores, so on small CPU machines a worker only steals a core from the step
    # (bench/RESULTS.md, "Training speed"); a GPU needs several to keep up.
    num_workers: int | None = None
    channels_last: bool = True  # NHWC convolutions: ~15% faster training on CPU (docs/speed.md section 4)
    # Keep freed tensor memory in the process while training (glibc mallopt; pipnet_core/heap.py) instead of
    # unmapping and page-faulting 64 MiB activations every step: 1.13x steps/s at 256 px on CPU, bit-identical.
    reuse_memory: bool = True
    # torch.compile the model: off, measured (bench/RESULTS.md, "Training speed"): 42 s to compile on idle cores
    # (6 min loaded) for +7.8% step rate (+5.2% CPU work; none measured under load), other bits than eager and a
    # C++ compiler needed: pays for itself after ~10 min of training on idle cores; turn it on for long rounds.
    compile: bool = False
    precision: str = "fp32"  # "fp32" or "bf16" (autocast; for GPUs: without AMX a CPU runs bf16 ~28% slower)
    device: str = "auto"  # "auto": CUDA when available, else CPU
    processes: int = 1  # data-parallel processes (torch DDP via torchrun); batch_size is per process
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: no augmentation

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.input_size % self.net_stride:
            raise ValueError(f"input_size {self.input_size} must be a multiple of net_stride {self.net_stride}")
        if self.meanface not in ("scheme", "data"):
            raise ValueError(f"meanface must be 'scheme' or 'data', got {self.meanface!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 or None (auto), got {self.num_workers}")

    @property
    def uses_channels_last(self) -> bool:
        """NHWC training unless the net is narrower than 16 channels.

        torch 2.13's CPU backward crashes the process (segfault / abort in oneDNN) on channels_last
        batches whose size is not a multiple of 8 when a stage has 8 channels (base_width 8, the test
        nets): reproduced with a bare ResNet-18 of width 8 and a batch of 7. Width 16 and up are fine.
        """
        return self.channels_last and self.base_width >= 16

    @property
    def grid(self) -> int:
        """S, the score map side."""
        return self.input_size // self.net_stride

    def resolved_num_workers(self, cuda: bool, cpus: int | None = None) -> int:
        """Loader processes: the explicit value, or auto.

        Auto: on a GPU, enough workers to keep it fed (``min(8, cpus - 1)``); on a CPU, none below 8
        cores, because augmentation and targets cost ~2% of a step there and a worker competes with the
        step's threads for the same cores; one from 8 cores up, where it overlaps for little.
        """
        if self.num_workers is not None:
            return int(self.num_workers)
        cpus = (os.cpu_count() or 1) if cpus is None else cpus
        if cuda:
            return max(0, min(8, cpus - 1))
        return 0 if cpus < 8 else 1

    def resolved_weight_decay(self) -> float:
        """Adam weight decay: the explicit value, or the official rule (5e-4 only without pretraining)."""
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 0.0 if (self.imagenet_weights or self.init_from) else 5e-4

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and ``weights_only``-safe)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused with their names."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(int(m) for m in d["milestones"])
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)
