"""Training samples as a torch Dataset: read, crop, normalise landmarks, augment; targets per batch.

Each item is one face: the image is read by :func:`pipnet_core.images.read_image` (the one reader
of the project: EXIF orientation applied, alpha over white), the crop box is cut out and
resized to ``input_size`` (:func:`pipnet_core.crop.crop_image`), the landmarks are mapped into the
normalised crop (:func:`pipnet_core.crop.to_crop`) and, for training, augmented with the image
(:mod:`pipnet_core.augment`). Targets are built once per batch in the collate function, because
:func:`pipnet_core.targets.build_targets` is vectorised over the batch.

Augmentation randomness is a pure function of ``(seed, epoch, index)``: the same sample gets the
same augmentation in a resumed run whatever worker loads it, which makes resumed training
reproduce an uninterrupted one. The training loader (:mod:`pipnet_core.loader`) asks for items by
``(epoch, index)``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from pipnet_core.augment import AugmentConfig, augment
from pipnet_core.crop import crop_image, to_crop
from pipnet_core.images import read_image
from pipnet_core.loss import BatchTargets, targets_to_torch
from pipnet_core.targets import LEVEL_MASKS, SampleTasks, build_targets

__all__ = ["Batch", "FaceDataset", "TargetCollate"]

LEVELS = ("std", "cls2", "cls3")


def _memory_quarter() -> int:
    """A quarter of this machine's physical memory, bytes (8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class FaceDataset(Dataset):
    """Faces for training: image files, crop boxes and landmarks in image pixels.

    Args:
        image_paths: M image files.
        crop_boxes: (M, 4) crop boxes ``(x0, y0, x1, y1)``, pixels (already enlarged to the training
            crop convention, see :func:`pipnet_core.crop.enlarge_box`).
        landmarks: (M, N, 2) landmarks, pixels; NaN marks a missing landmark.
        levels: M curriculum levels (``std``, ``cls2``, ``cls3``); None means all ``std``.
        input_size: Side of the model input in pixels.
        flip: The scheme's flip table, or None (no flip augmentation).
        augment: Augmentation settings, or None for none (evaluation).
        cache_crops: Keep every crop in memory after its first read (per process; see
            :meth:`precache` to fill it before loader workers fork), up to ``cache_limit`` bytes.
        seed: Base seed of the augmentation randomness.
        tasks: Per-sample head set, regression switch, shrink exponent and weight (STLD's routing,
            :class:`pipnet_core.targets.SampleTasks`); None: the main heads with PIPNet's loss.
        cache_limit: Bytes of crops to keep; None: a quarter of the machine's memory. A 256 px crop
            is 192 KiB, so 100k faces would need 18 GiB: past the limit crops are read from their
            files again each epoch (slower, docs/scale.md section 4, but never out of memory).

    Raises:
        ValueError: inconsistent lengths or shapes, or an unknown level (named with its row).
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        crop_boxes: np.ndarray,
        landmarks: np.ndarray,
        levels: Sequence[str] | None = None,
        input_size: int = 256,
        flip: Sequence[int] | None = None,
        augment: AugmentConfig | None = None,
        cache_crops: bool = False,
        seed: int = 0,
        tasks: SampleTasks | None = None,
        cache_limit: int | None = None,
    ) -> None:
        self.image_paths = [str(p) for p in image_paths]
        m = len(self.image_paths)
        self.crop_boxes = np.asarray(crop_boxes, dtype=np.float64)
        self.landmarks = np.asarray(landmarks, dtype=np.float64)
        self.levels = ["std"] * m if levels is None else [str(lv) for lv in levels]
        if self.crop_boxes.shape != (m, 4):
            raise ValueError(f"crop_boxes must have shape ({m}, 4) for {m} images, got {self.crop_boxes.shape}")
        if self.landmarks.ndim != 3 or self.landmarks.shape[0] != m or self.landmarks.shape[2] != 2:
            raise ValueError(f"landmarks must have shape ({m}, N, 2), got {self.landmarks.shape}")
        if len(self.levels) != m:
            raise ValueError(f"got {len(self.levels)} levels for {m} images; give one level per sample")
        bad = [(i, lv) for i, lv in enumerate(self.levels) if lv not in LEVEL_MASKS]
        if bad:
            raise ValueError(f"unknown curriculum level {bad[0][1]!r} at row {bad[0][0]}; use one of {LEVELS}")
        self.tasks = SampleTasks.default(self.levels) if tasks is None else tasks
        if len(self.tasks.head) != m:
            raise ValueError(f"got tasks for {len(self.tasks.head)} samples for {m} images; give one per sample")
        if flip is not None and len(flip) != self.landmarks.shape[1]:
            raise ValueError(f"flip table has {len(flip)} entries for {self.landmarks.shape[1]} landmarks")
        self.input_size = int(input_size)
        self.flip = None if flip is None else tuple(int(i) for i in flip)
        self.augment = augment
        self.cache_crops = cache_crops
        self.seed = int(seed)
        self.epoch = 0
        self._cache: dict[int, np.ndarray] = {}
        self._cache_left = _memory_quarter() if cache_limit is None else int(cache_limit)

    @property
    def num_landmarks(self) -> int:
        """N."""
        return int(self.landmarks.shape[1])

    def __len__(self) -> int:
        return len(self.image_paths)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of this epoch (call before creating the epoch's loader)."""
        self.epoch = int(epoch)

    def with_augment(self, augment: AugmentConfig | None) -> FaceDataset:
        """A shallow copy with other augmentation settings (the crop cache is shared)."""
        other = copy.copy(self)
        other.augment = augment
        return other

    def normalised_landmarks(self) -> np.ndarray:
        """(M, N, 2) landmarks in normalised crop coordinates, before augmentation."""
        return to_crop(self.landmarks, self.crop_boxes)

    def load_crop(self, index: int) -> np.ndarray:
        """The (S, S, 3) uint8 RGB crop of sample ``index``.

        Raises:
            ImageReadError: the image cannot be read (the message names the path).
        """
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        crop = crop_image(read_image(self.image_paths[index]).rgb, self.crop_boxes[index], self.input_size)
        if self.cache_crops and crop.nbytes <= self._cache_left:
            self._cache[index] = crop
            self._cache_left -= crop.nbytes
        return crop

    def precache(self) -> None:
        """Read every crop now, up to the cache limit (so loader workers forked later share them)."""
        if self.cache_crops:
            for i in range(len(self)):
                if self._cache_left < self.input_size * self.input_size * 3:
                    break
                self.load_crop(i)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``key``: an index (augmented as of :meth:`set_epoch`), or ``(epoch, index)``.

        The training loader passes ``(epoch, index)`` (:class:`pipnet_core.loader.EpochKeyed`), so
        workers that live across epochs need no per-epoch state.
        """
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        image = self.load_crop(index)
        landmarks = to_crop(self.landmarks[index], self.crop_boxes[index])
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            image, landmarks = augment(image, landmarks, rng, self.flip, self.augment)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "landmarks": torch.from_numpy(np.asarray(landmarks, dtype=np.float32)),
            "level": self.levels[index],
            "index": index,
        }

    def uses_aux_heads(self) -> bool:
        """Whether any sample feeds the second head set (the model then needs ``aux_heads``)."""
        return bool(np.any(self.tasks.head != 0))

    def to_npz(self, path: str | Path) -> Path:
        """Write the sample list (paths, boxes, landmarks, levels) to an .npz file, e.g. for DDP workers."""
        path = Path(path)
        np.savez(
            path,
            image_paths=np.array(self.image_paths, dtype=str),
            crop_boxes=self.crop_boxes,
            landmarks=self.landmarks,
            levels=np.array(self.levels, dtype=str),
            task_head=self.tasks.head,
            task_regress=self.tasks.regress,
            task_shrink=self.tasks.shrink,
            task_weight=self.tasks.weight,
        )
        return path

    @classmethod
    def from_npz(cls, path: str | Path, **kwargs: Any) -> FaceDataset:
        """Read a sample list written by :meth:`to_npz`; ``kwargs`` as for the constructor."""
        with np.load(path, allow_pickle=False) as z:
            tasks = None
            if "task_head" in z:
                tasks = SampleTasks(z["task_head"], z["task_regress"], z["task_shrink"], z["task_weight"])
            return cls(z["image_paths"].tolist(), z["crop_boxes"], z["landmarks"], z["levels"].tolist(),
                       tasks=tasks, **kwargs)  # fmt: skip


class Batch(NamedTuple):
    """A training batch.

    Attributes:
        images: (B, S, S, 3) uint8 RGB crops.
        landmarks: (B, N, 2) float32 normalised crop coordinates (after augmentation).
        targets: The batch's training targets.
        index: (B,) dataset indices.
    """

    images: torch.Tensor
    landmarks: torch.Tensor
    targets: BatchTargets
    index: torch.Tensor


class TargetCollate:
    """Collate items into a :class:`Batch`, building the targets once for the whole batch.

    Args:
        nb: (N, C) neighbour table (``NeighbourTable.nb``).
        grid: S, the model's score map size.
        tasks: The dataset's per-sample tasks (looked up by each item's index); None: PIPNet's loss
            on the main heads for every sample.
    """

    def __init__(self, nb: np.ndarray, grid: int, tasks: SampleTasks | None = None) -> None:
        self.nb = np.asarray(nb, dtype=np.int64)
        self.grid = int(grid)
        self.tasks = tasks

    def __call__(self, items: list[dict[str, Any]]) -> Batch:
        landmarks = torch.stack([it["landmarks"] for it in items])
        tasks = None if self.tasks is None else self.tasks.take([it["index"] for it in items])
        targets = build_targets(landmarks.numpy(), [it["level"] for it in items], self.nb, self.grid, tasks=tasks)
        return Batch(
            images=torch.stack([it["image"] for it in items]),
            landmarks=landmarks,
            targets=targets_to_torch(targets),
            index=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        )
