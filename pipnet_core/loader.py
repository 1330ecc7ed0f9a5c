"""The training loader: one DataLoader for the whole run, keyed by (epoch, index), feeding the step.

Where a training step's time goes (bench/bench_train.py, bench/RESULTS.md "Training speed"): at
256 px on two CPU cores the step (forward, loss, backward, Adam) takes ~65 ms per image; reading a
cached crop and augmenting it (~1.8 CPU ms per image), building the batch's targets and collating
(~0.15 ms per image) and normalising it (a table look-up, ~0.3 ms per image) take about 1.4% of the
step's CPU. So on a small CPU machine the loader
runs in the training process (``num_workers=0``): a worker process would do the same 2% of work on
a core the step's threads need, and every time it runs, the step's two-thread OpenMP team waits for
the thread it displaced. With more cores, or a GPU that needs hundreds of images per second, workers
overlap the loading with the step; then they are started once for the whole run
(``persistent_workers``) after the crop cache is filled, so every worker shares the parent's crops
instead of reading them again each epoch.

Items are keyed by ``(epoch, index)``: the sampler tells each item its epoch, so a persistent worker
needs no per-epoch state and the augmentation of a sample stays a function of (seed, epoch, index)
only, whatever worker loads it (the resume-equals-uninterrupted property).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from pipnet_core.data import FaceDataset, TargetCollate

__all__ = ["EpochKeyed", "EpochSampler", "make_loader"]


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so resumed runs see the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


class EpochKeyed(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for each index of ``inner`` (an :class:`EpochSampler` or DistributedSampler)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.epoch = inner, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.inner)


def _worker_init(_: int) -> None:
    # DataLoader already gives each worker one torch thread; OpenCV would otherwise start a thread
    # per core in every worker and fight the training step for them.
    import cv2

    cv2.setNumThreads(0)  # 0: no thread pool at all (1 hangs in a child forked after the parent used cv2's pool)


def make_loader(
    dataset: FaceDataset,
    sampler: Sampler,
    batch_size: int,
    collate: TargetCollate,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """The run's loader: batches of ``collate`` over ``sampler`` (wrapped in :class:`EpochKeyed`).

    Call ``loader.sampler.set_epoch(epoch)`` before iterating each epoch. With workers, the crop
    cache is filled first (:meth:`FaceDataset.precache`) so the forked workers share it.
    """
    if num_workers > 0 and dataset.cache_crops:
        dataset.precache()
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochKeyed(sampler),
        drop_last=True,  # as the official loader: a constant batch size (and one compiled graph)
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
