"""The holdout guard by image content: no face the model trains on or labels may be a holdout face.

Sample ids hash the image bytes and the face box, so the same face imported twice with two boxes
(the holdout's box from its landmarks, the pool's from a detector) gets two ids, and a guard on ids
alone lets it through. The guard here compares image content instead: samples carry their image's
digest, and a train or pool face on a holdout image whose box overlaps that holdout face by
IoU > :data:`HOLDOUT_IOU` is refused, with a reason. A new holdout face on an image whose
overlapping face the store already has for train or pool is refused the same way (it would not be
unseen). Other faces of the same image (no overlap) are fine.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from annotations.store.errors import HoldoutLeak

__all__ = [
    "FACE_COLUMNS",
    "HOLDOUT_IOU",
    "HoldoutGuard",
    "box_iou",
    "conflict_rejects",
    "faces_of_images",
    "holdout_conflicts",
    "refuse_conflicts",
]

# Two boxes of one face from different sources (tight landmark box, detector box) overlap by ~0.4-0.8;
# two neighbouring faces rarely pass 0.3.
HOLDOUT_IOU = 0.3
# The sample columns the guard reads.
FACE_COLUMNS = ("sample_id", "image_digest", "box", "split")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, K) intersection over union of boxes ``a`` (M, 4) and ``b`` (K, 4), (x0, y0, x1, y1) pixels."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def _faces(table: pa.Table) -> list[tuple[str, str, np.ndarray, str]]:
    """(digest, sample_id, (4,) box, split) of the rows that have a digest."""
    digests = table["image_digest"].to_pylist()
    ids = table["sample_id"].to_pylist()
    splits = table["split"].to_pylist()
    boxes = np.asarray(table["box"].to_pylist(), dtype=np.float64).reshape(-1, 4)
    return [(d, s, boxes[i], sp) for i, (d, s, sp) in enumerate(zip(digests, ids, splits, strict=True)) if d]


def holdout_conflicts(new: pa.Table, stored: pa.Table) -> dict[int, str]:
    """Rows of ``new`` the holdout guard refuses: row index -> reason.

    Args:
        new: Sample rows about to be written (samples_schema; their split assigned).
        stored: The store's samples of the same images (sample_id, image_digest, box, split).
    """
    holdout: dict[str, list[tuple[str, np.ndarray, bool]]] = defaultdict(list)  # digest -> (id, box, stored)
    seen: dict[str, list[tuple[str, np.ndarray, str]]] = defaultdict(list)  # digest -> stored train/pool faces
    for digest, sid, box, split in _faces(stored):
        if split == "holdout":
            holdout[digest].append((sid, box, True))
        else:
            seen[digest].append((sid, box, split))
    refused: dict[int, str] = {}
    rows = _faces(new)
    row_of = {sid: i for i, sid in enumerate(new["sample_id"].to_pylist())}
    for digest, sid, box, split in rows:  # new holdout faces first: they win over new train/pool rows
        if split != "holdout":
            continue
        clash = [(o, s) for o, b, s in seen[digest] if box_iou(box, b)[0, 0] > HOLDOUT_IOU]
        if clash:
            other, other_split = clash[0]
            refused[row_of[sid]] = (
                f"holdout face overlaps {other_split} sample {other} of the same image (IoU > {HOLDOUT_IOU}); "
                "a holdout face must be one the model never trains on: keep it out of the holdout"
            )
        else:
            holdout[digest].append((sid, box, False))
    for digest, sid, box, split in rows:
        if split == "holdout":
            continue
        clash = [(h, b) for h, b, _ in holdout[digest] if h != sid]
        iou = [float(box_iou(box, b)[0, 0]) for _, b in clash]
        if iou and max(iou) > HOLDOUT_IOU:
            which = clash[int(np.argmax(iou))][0]
            refused[row_of[sid]] = (
                f"{split} face overlaps holdout sample {which} of the same image (IoU {max(iou):.2f} > {HOLDOUT_IOU}); "
                "holdout faces are never trained on, pseudo-labelled or reviewed (docs/store.md section 6)"
            )
    return refused


def faces_of_images(stored: pa.Table, new: pa.Table) -> pa.Table:
    """The rows of ``stored`` whose image digest is one of ``new``'s."""
    digests = pc.drop_null(new["image_digest"]).combine_chunks() if new.num_rows else pa.array([], pa.string())
    if not len(digests):
        return stored.slice(0, 0)
    return stored.filter(pc.fill_null(pc.is_in(stored["image_digest"], value_set=digests), False))


def conflict_rejects(table: pa.Table, refused: dict[int, str]) -> pd.DataFrame:
    """Reject rows (stage, source, location, sample_id, reason) of the refused rows of ``table``."""
    rows = [
        {
            "stage": "pool" if table["split"][i].as_py() == "pool" else "import",
            "source": table["image_uri"][i].as_py(),
            "location": None,
            "sample_id": table["sample_id"][i].as_py(),
            "reason": reason,
        }
        for i, reason in sorted(refused.items())
    ]
    return pd.DataFrame(rows, columns=["stage", "source", "location", "sample_id", "reason"])


def refuse_conflicts(table: pa.Table, refused: dict[int, str]) -> None:
    """Raise :class:`HoldoutLeak` when the guard refused rows of ``table`` (Store.add_samples)."""
    if not refused:
        return
    row, reason = next(iter(refused.items()))
    raise HoldoutLeak(
        f"add_samples: {len(refused)} face(s) overlap holdout faces of the same image, e.g. sample "
        f"{table['sample_id'][row].as_py()!r} ({table['image_uri'][row].as_py()}): {reason}. Drop them "
        "first: Store.holdout_conflicts(samples) lists them as rejects"
    )


class HoldoutGuard:
    """Mixin of :class:`annotations.store.Store`: the guard's questions about samples before they are written."""

    holdout_fraction: float
    _reader: Any

    def _new_samples(self, table: pa.Table) -> pa.Table:  # provided by Store
        raise NotImplementedError

    def _split_codes(self, sample_ids: Any) -> tuple[np.ndarray, np.ndarray]:  # provided by Store
        raise NotImplementedError

    def _samples_of_images(self, table: pa.Table) -> pa.Table:
        """Stored samples whose image digest is one of ``table``'s (sample_id, image_digest, box, split)."""
        stored = self._reader.read("samples", self._reader.parts("samples"), list(FACE_COLUMNS))
        return faces_of_images(stored, table)

    def holdout_conflicts(self, samples: pd.DataFrame, default_split: str = "train") -> pd.DataFrame:
        """The faces ``Store.add_samples`` would refuse for overlapping a holdout face, as reject rows.

        A train or pool face on a holdout image whose box overlaps the holdout face (IoU > 0.3), or a
        new holdout face overlapping a stored train or pool face (see the module docstring).

        Returns:
            Columns stage (``import``; ``pool`` for pool faces), source (image), location, sample_id, reason.
        """
        from annotations.store._convert import samples_table

        table = self._new_samples(samples_table(samples, self.holdout_fraction, default_split))
        return conflict_rejects(table, holdout_conflicts(table, self._samples_of_images(table)))

    def has_samples(self, sample_ids: Sequence[str]) -> np.ndarray:
        """(R,) bool: which of the ids the store holds."""
        pos, _ = self._split_codes(pa.array(list(sample_ids), pa.string()))
        return pos >= 0
