"""The label store: samples, labels, reviews, rejects and round files in Parquet, append-only.

Everything the store alone uses lives in this room: the Parquet schemas (:mod:`.schema`), sample and
label identities (:mod:`.ids`), splits and the holdout guard (:mod:`.splits`), the label views
(:mod:`.views`), the round files (:mod:`.rounds`), and the private file system, lock, part and
metadata helpers (``_fs``, ``_lock``, ``_parts``, ``_meta``, ``_convert``). Callers import from here.
The layout on disk is described in docs/store.md.
"""

from annotations.store.errors import (
    CorruptFile,
    HoldoutLeak,
    RoundFileMissing,
    SchemaVersionError,
    StoreError,
    StoreLocked,
)
from annotations.store.schema import LABEL_SOURCES, REVIEW_STATUSES, SPLITS
from annotations.store.splits import assign_split
from annotations.store.store import Store
from annotations.store.views import LabelView

__all__ = [
    "LABEL_SOURCES",
    "REVIEW_STATUSES",
    "SPLITS",
    "CorruptFile",
    "HoldoutLeak",
    "LabelView",
    "RoundFileMissing",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoreLocked",
    "assign_split",
]
