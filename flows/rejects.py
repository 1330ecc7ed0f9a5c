"""``pipstc rejects``: every input the store could not use, with its file, row or line, and the reason.

Rejects are recorded by every stage that reads outside data (``import`` of labeled files, ``pool``
image folders, ``pseudo`` labeling, ``review`` pulls); one line per reject reads like a compiler
message, ``<file>: <row/line>: <reason>``, so an editor or ``grep`` can jump to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from annotations.store import Store

__all__ = ["REJECT_CSV_COLUMNS", "find_rejects", "format_reject", "reject_records", "summarise_rejects"]

REJECT_CSV_COLUMNS = ("stage", "round", "source", "location", "reason", "sample_id", "created_at")


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def find_rejects(
    store_url: str,
    round: int | None = None,  # noqa: A002 - the CLI option --round
    stage: str | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """The store's rejects, in the order they were recorded, optionally of one round, stage or source.

    Args:
        store_url: The store.
        round: Only rejects recorded for this round (imports record round 0; pools none).
        stage: Only this stage (``import``, ``pool``, ``pseudo``, ``review``, ...).
        source: Only rejects whose file is this one or lies under this folder.
    """
    frame = Store.open(store_url).rejects()
    keep = pd.Series(True, index=frame.index)
    if round is not None:
        keep &= frame["round"].eq(round).fillna(False).astype(bool)
    if stage is not None:
        keep &= frame["stage"] == stage
    if source is not None:
        root = _absolute(source).rstrip("/")
        srcs = frame["source"].astype(str)
        keep &= (srcs == root) | srcs.str.startswith(root + "/")
    return frame[keep].reset_index(drop=True)


def format_reject(row: Mapping[str, Any]) -> str:
    """``<file>: <location>: <reason>`` of one reject; the location is left out for a whole-file reject."""
    location = row.get("location")
    whole = location is None or pd.isna(location) or location in ("", "file")
    return f"{row['source']}: " + ("" if whole else f"{location}: ") + str(row["reason"])


def summarise_rejects(frame: pd.DataFrame, stored_stages: Sequence[str] = ()) -> str:
    """One line: how many rejects, by stage (or, when none match, which stages the store has)."""
    if frame.empty:
        known = f" (stages with rejects in this store: {', '.join(stored_stages)})" if stored_stages else ""
        return f"no rejects match{known}"
    by_stage = ", ".join(f"{s}: {n}" for s, n in frame["stage"].value_counts().sort_index().items())
    return f"{len(frame)} rejects ({by_stage})"


def reject_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rejects as plain records of :data:`REJECT_CSV_COLUMNS`, None for missing values."""
    out = frame.reindex(columns=list(REJECT_CSV_COLUMNS))
    out["round"] = out["round"].astype("Int64")  # a round is an integer; pandas reads int32 with nulls as float
    out = out.astype(object)
    return out.where(out.notna(), None).to_dict("records")
