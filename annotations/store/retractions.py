"""Retractions: withdrawing a label without editing the append-only store.

A person's label can stop counting after it was stored: the reviewer's annotation was deleted in
Label Studio (annotations.review.pull finds that by comparing annotation ids). Rows are never edited,
so a *retraction record* is appended instead: a label row whose ``retracts`` column names the label
it withdraws, with NaN landmarks, in the same ``round=<k>/source=<s>`` partition as that label. Every
read of a partition therefore sees a retraction together with what it retracts, and
:func:`in_force` drops both from the labels the store hands out (``Store.labels``, the current-label
view, the training set, the pool still to pseudo-label). ``Store.lineage`` keeps them: it is the
history. A retraction's label id is derived from the retracted label id, so retrying one is a no-op.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["in_force", "retract_labels", "retraction_id"]

_PERSON = b"pipstc-retract1"


def retraction_id(label_id: str) -> str:
    """The label id of the retraction of ``label_id`` (32 hex digits of BLAKE2b-128, RFC 7693)."""
    return hashlib.blake2b(str(label_id).encode(), digest_size=16, person=_PERSON).hexdigest()


def in_force(table: pa.Table) -> np.ndarray:
    """(R,) bool: the rows that count, neither a retraction record nor a label one withdraws.

    Args:
        table: Label rows with at least the ``label_id`` and ``retracts`` columns.
    """
    retracts = table["retracts"]
    if retracts.null_count == len(retracts):
        return np.ones(table.num_rows, dtype=bool)
    record = retracts.is_valid().to_numpy(zero_copy_only=False)
    targets = pc.drop_null(retracts)
    if isinstance(targets, pa.ChunkedArray):
        targets = targets.combine_chunks()
    withdrawn = pc.is_in(table["label_id"], value_set=targets).to_numpy(zero_copy_only=False)
    return ~(np.asarray(record, dtype=bool) | np.asarray(withdrawn, dtype=bool))


def retract_labels(store: Any, label_ids: Sequence[str], *, when: datetime | None = None) -> int:
    """Withdraw labels: append one retraction record per label that is not retracted yet.

    Args:
        store: The label store.
        label_ids: Labels to withdraw (unknown ids are ignored; a retraction cannot itself be retracted).
        when: Time of the retraction (default now).

    Returns:
        The number of labels newly retracted.
    """
    wanted = set(map(str, label_ids))
    if not wanted:
        return 0
    all_labels = store.labels(retracted=True)
    frame = all_labels.frame
    done = set(frame["retracts"].dropna().astype(str))
    pick = frame["label_id"].isin(wanted).to_numpy() & frame["retracts"].isna().to_numpy()
    pick &= ~frame["label_id"].isin(done).to_numpy()
    targets = frame[pick].reset_index(drop=True)
    if targets.empty:
        return 0
    n = store.scheme.num_landmarks
    rows = pd.DataFrame(
        {
            "label_id": [retraction_id(t) for t in targets["label_id"]],
            "sample_id": targets["sample_id"],
            "source": targets["source"],  # same partition as the label it withdraws
            "round": targets["round"],
            "ls_task_id": targets["ls_task_id"],
            "ls_annotation_id": targets["ls_annotation_id"],
            "retracts": targets["label_id"],
            "created_at": pd.Timestamp(when or datetime.now(UTC)),
        }
    )
    store.add_labels(rows, np.full((len(rows), n, 2), np.nan, dtype=np.float32))
    return len(rows)
