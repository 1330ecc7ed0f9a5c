"""Sample ids, a content hash of the image bytes and the face box (docs/store.md section 4.1); label-write results.

The same face in the same image file always gets the same id, whatever its path, so adding a folder
twice adds nothing (the store drops ids it already holds). Two faces of one image differ by their box.
The box enters rounded to 0.01 px, so float noise from a format round trip (a COCO ``[x, y, w, h]``
written and read back, say) does not change the id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pipnet_core.images import image_digest  # the image half of the id; re-exported

__all__ = ["SAMPLE_ID_LENGTH", "LabelIds", "image_digest", "sample_id", "sample_id_from_digest"]

# 24 hex chars = 96 bits: collisions stay negligible far beyond any labeling pool (birthday bound ~2^48).
SAMPLE_ID_LENGTH = 24


def _box_key(box: Sequence[float]) -> str:
    values = np.asarray(box, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.all(np.isfinite(values)):
        raise ValueError(f"a face box is 4 finite numbers (x0, y0, x1, y1), got {list(values)}")
    # Integer hundredths: no "-0.00" vs "0.00" or repr differences between platforms.
    hundredths = np.rint(values * 100.0).astype(np.int64) + 0  # + 0 turns -0 into 0
    return ",".join(str(int(v)) for v in hundredths)


def sample_id_from_digest(digest: str, box: Sequence[float]) -> str:
    """The sample id from a precomputed :func:`image_digest` and a box (x0, y0, x1, y1) in pixels."""
    key = f"{digest}|{_box_key(box)}".encode()
    return hashlib.sha256(key).hexdigest()[:SAMPLE_ID_LENGTH]


def sample_id(image_bytes: bytes, box: Sequence[float]) -> str:
    """The sample id of the face ``box`` (x0, y0, x1, y1 pixels) in the image file ``image_bytes``."""
    return sample_id_from_digest(image_digest(image_bytes), box)


class LabelIds(list[str]):
    """The label id of every row given to :meth:`annotations.store.Store.add_labels`, in order.

    A plain list of ids (new or already stored), so callers that map rows to ids keep working;
    :attr:`new` says which of them this call wrote, so a re-import can report "0 new".

    Attributes:
        new: The ids written by this call, in write order (a retried write gives an empty tuple).
    """

    def __init__(self, ids: Sequence[str] = (), new: Sequence[str] = ()) -> None:
        super().__init__(ids)
        self.new: tuple[str, ...] = tuple(new)
