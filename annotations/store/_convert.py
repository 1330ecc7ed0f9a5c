"""Callers' DataFrames and arrays -> store tables, checked at the boundary (docs/architecture.md section 8).

Every problem raises :class:`StoreError` naming the column, the row and the fix. Also here: the
deterministic ids and natural keys the store uses to make retried writes no-ops.
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

from annotations.store.errors import StoreError
from annotations.store.schema import (
    LABEL_SOURCES,
    LEVELS,
    REVIEW_STATUSES,
    SPLITS,
    labels_schema,
    landmarks_to_arrow,
    rejects_schema,
    reviews_schema,
    samples_schema,
)
from annotations.store.splits import DEFAULT_SPLITS, assign_splits

__all__ = [
    "LABEL_ID_FIELDS",
    "new_states",
    "examples",
    "first_of_each",
    "not_in",
    "label_table",
    "natural_keys",
    "rejects_table",
    "reviews_table",
    "samples_table",
]

# What identifies a label: the same face, source, round, model and person give the same id, so a
# retried write of the same rows is a no-op. created_at is left out on purpose (a retry stamps a new
# time). Human and corrected labels also hash their landmarks (two different labels of a face by one
# person stay two labels); pseudo-labels do not, so a retried shard whose predictions differ in the
# last bits (nondeterministic kernels) still dedupes: a model version labels a face once per round.
LABEL_ID_FIELDS = (
    "sample_id",
    "source",
    "round",
    "model_version",
    "annotator",
    "ls_task_id",
    "ls_annotation_id",
    "parent_label_id",
)
_LABEL_PERSON = b"pipstc-label-v1"
_LIST_COLUMNS = ("landmarks", "landmark_confidence", "moved", "visibility")
_NULL_MARK = "\x00"  # a null in a natural key, distinct from an empty string
_SEP = "\x1f"  # ASCII unit separator between key fields


def _now() -> pa.Scalar:
    return pa.scalar(datetime.now(UTC), type=pa.timestamp("us", tz="UTC"))


def _column(series: pd.Series, field: pa.Field, what: str) -> pa.Array:
    arr = _column_chunks(series, field, what)
    # arrow-backed pandas columns (e.g. pandas' "str" dtype) convert to chunked arrays; a table whose
    # columns are chunked differently crashed pyarrow's Table.filter, so every column is one chunk
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _column_chunks(series: pd.Series, field: pa.Field, what: str) -> pa.Array | pa.ChunkedArray:
    try:
        if pa.types.is_timestamp(field.type):
            arr = pa.array(series, from_pandas=True)
            if pa.types.is_timestamp(arr.type) and arr.type.tz is None:
                arr = arr.cast(pa.timestamp(arr.type.unit, tz="UTC"))  # naive times are UTC
            return arr.cast(field.type, safe=False)  # ns -> us drops sub-microseconds, by intent
        if pa.types.is_fixed_size_list(field.type):
            size = field.type.list_size
            values = np.asarray(series.tolist(), dtype=np.float32)
            if not len(series):
                values = values.reshape(0, size)  # an empty batch: asarray([]) is (0,), not (0, size)
            if values.shape != (len(series), size):
                raise ValueError(f"expected {size} numbers per row, got an array of shape {values.shape}")
            return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=field.type)
        return pa.array(series, from_pandas=True).cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError, TypeError) as e:
        raise StoreError(f"{what}: column {field.name!r} cannot be read as {field.type}: {e}") from None


def _to_table(
    frame: pd.DataFrame,
    schema: pa.Schema,
    what: str,
    *,
    given: dict[str, pa.Array] | None = None,
    defaults: dict[str, pa.Scalar] | None = None,
    ignore: Sequence[str] = (),
    allow_null: Sequence[str] = (),
) -> pa.Table:
    """Build a table of ``schema`` from ``frame``; ``given`` columns are ready arrays; ``allow_null`` columns
    may stay null for the caller to fill."""
    if not isinstance(frame, pd.DataFrame):
        raise StoreError(f"{what}: expected a pandas DataFrame, got {type(frame).__name__}")
    given = given or {}
    defaults = defaults or {}
    unknown = [c for c in frame.columns if c not in schema.names and c not in ignore]
    if unknown:
        raise StoreError(
            f"{what}: unknown column(s) {unknown}; the table has {list(schema.names)}; drop or rename them"
        )
    n = len(frame)
    arrays = []
    for field in schema:
        if field.name in given:
            arr = given[field.name]
        elif field.name in frame.columns:
            arr = _column(frame[field.name], field, what)
            if field.name in defaults and arr.null_count:
                arr = pc.fill_null(arr, defaults[field.name])
        elif field.name in defaults:
            arr = pc.fill_null(pa.nulls(n, type=field.type), defaults[field.name])
        elif field.nullable:
            arr = pa.nulls(n, type=field.type)
        else:
            raise StoreError(f"{what}: missing required column {field.name!r}; every row needs it")
        if not field.nullable and arr.null_count and field.name not in allow_null:
            row = int(np.flatnonzero(np.asarray(arr.is_null()))[0])
            raise StoreError(f"{what}: column {field.name!r} is empty (null/NaN) in row {row}; every row needs it")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)


def _check_values(table: pa.Table, column: str, allowed: Sequence[str], what: str) -> None:
    col = table[column]
    bad = pc.and_(pc.invert(pc.is_in(col, value_set=pa.array(list(allowed)))), pc.is_valid(col))
    if pc.any(bad).as_py():
        row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
        raise StoreError(
            f"{what}: column {column!r} has {col[row].as_py()!r} in row {row}; allowed: {', '.join(allowed)}"
        )


def natural_keys(table: pa.Table, columns: Sequence[str]) -> pa.ChunkedArray | pa.Array:
    """One string per row joining ``columns`` (nulls marked), for dedupe by equality of the fields."""
    parts = []
    for name in columns:
        col = table[name]
        if not pa.types.is_string(col.type):
            col = pc.cast(col, pa.string())
        parts.append(pc.fill_null(col, _NULL_MARK))
    return pc.binary_join_element_wise(*parts, _SEP)


def label_ids(table: pa.Table, landmarks: np.ndarray) -> list[str]:
    """Deterministic label ids (32 hex digits of BLAKE2b-128, RFC 7693) of the rows of ``table``.

    Args:
        table: Label rows (the LABEL_ID_FIELDS columns are read).
        landmarks: (R, N, 2) image px, hashed for non-pseudo rows.
    """
    keys = natural_keys(table, LABEL_ID_FIELDS).to_pylist()
    content = np.asarray(pc.not_equal(table["source"], "pseudo").to_numpy(zero_copy_only=False), dtype=bool)
    h = hashlib.blake2b
    if not content.any():
        return [h(k.encode(), digest_size=16, person=_LABEL_PERSON).hexdigest() for k in keys]
    # one bit pattern per value: all NaNs alike, -0.0 == 0.0
    canon = np.where(np.isnan(landmarks), np.float32(np.nan), landmarks + np.float32(0.0)).astype(np.float32)
    out = []
    for i, k in enumerate(keys):
        b = k.encode()
        if content[i]:
            b += canon[i].tobytes()
        out.append(h(b, digest_size=16, person=_LABEL_PERSON).hexdigest())
    return out


def _array2(name: str, values: Any, r: int, n: int, dtype: type, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (r, n):
        raise StoreError(f"{what}: {name} must have shape (R, N) = ({r}, {n}), got {arr.shape}")
    return arr.astype(dtype, copy=False)


def _visibility(visibility: Any, lm: np.ndarray, type_: pa.DataType, what: str) -> pa.Array:
    """(R, N) COCO visibility as an Arrow column, checked against the landmarks: 0 exactly where NaN."""
    r, n = lm.shape[:2]
    vis = _array2("visibility", visibility, r, n, np.int8, what)
    bad = ~np.isin(vis, (0, 1, 2))
    if bad.any():
        row, i = (int(v) for v in np.argwhere(bad)[0])
        raise StoreError(f"{what}: visibility {int(vis[row, i])} in row {row}, landmark {i}; use 0 (missing),"
                         " 1 (occluded) or 2 (visible)")  # fmt: skip
    missing = np.isnan(lm).any(axis=2)
    wrong = (vis == 0) != missing
    if wrong.any():
        row, i = (int(v) for v in np.argwhere(wrong)[0])
        raise StoreError(
            f"{what}: row {row}, landmark {i} has visibility {int(vis[row, i])} but its position is"
            f" {'NaN' if missing[row, i] else 'given'}; visibility 0 (missing) goes with NaN landmarks, 1 and 2"
            " with positions"
        )
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vis).reshape(-1)), type=type_)


def label_table(
    rows: pd.DataFrame,
    landmarks: np.ndarray,
    landmark_confidence: np.ndarray | None,
    moved: np.ndarray | None,
    num_landmarks: int,
    scheme_name: str,
    visibility: np.ndarray | None = None,
) -> pa.Table:
    """Validated label rows with label ids filled in (generated where absent).

    Args:
        rows: sample_id, source, round and optional scalar columns of labels_schema.
        landmarks: (R, N, 2) image px (NaN = missing).
        landmark_confidence: (R, N) or None.
        moved: (R, N) bool or None.
        num_landmarks: N of the store's scheme.
        scheme_name: For error messages.
        visibility: (R, N) COCO visibility (0 missing, 1 occluded, 2 visible) or None.
    """
    what = "add_labels"
    for name in _LIST_COLUMNS:
        if name in rows.columns:
            raise StoreError(f"{what}: pass {name!r} as the array argument, not as a DataFrame column")
    r, n = len(rows), num_landmarks
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim != 3 or lm.shape[0] != r or lm.shape[2] != 2:
        raise StoreError(f"{what}: landmarks must have shape (R, N, 2) = ({r}, {n}, 2) image px, got {lm.shape}")
    if lm.shape[1] != n:
        raise StoreError(
            f"{what}: landmarks have {lm.shape[1]} points per face but the store's scheme {scheme_name!r} has {n};"
            " convert them to the store's scheme or use a store of their scheme"
        )
    if np.isinf(lm).any():
        row = int(np.flatnonzero(np.isinf(lm).any(axis=(1, 2)))[0])
        raise StoreError(f"{what}: landmarks of row {row} are infinite; use NaN for a missing landmark")
    given: dict[str, pa.Array] = {"landmarks": landmarks_to_arrow(lm)}
    schema = labels_schema(n)
    if landmark_confidence is not None:
        conf = _array2("landmark_confidence", landmark_confidence, r, n, np.float32, what)
        given["landmark_confidence"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(conf).reshape(-1)), type=schema.field("landmark_confidence").type
        )
    if moved is not None:
        mv = _array2("moved", moved, r, n, np.bool_, what)
        given["moved"] = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(mv).reshape(-1)), type=schema.field("moved").type
        )
    if visibility is not None:
        given["visibility"] = _visibility(visibility, lm, schema.field("visibility").type, what)
    if "label_id" not in rows.columns:
        given["label_id"] = pa.nulls(r, pa.string())
    table = _to_table(rows, schema, what, given=given, defaults={"created_at": _now()}, allow_null=("label_id",))
    _check_values(table, "source", LABEL_SOURCES, what)
    _check_values(table, "level", LEVELS, what)
    if pc.any(pc.less(table["round"], 0)).as_py():
        raise StoreError(f"{what}: column 'round' must be >= 0 (round 0 is the supervised round)")
    ids = table["label_id"]
    if ids.null_count:
        made = pa.array(label_ids(table, lm), pa.string())
        table = table.set_column(0, schema.field("label_id"), pc.if_else(pc.is_null(ids), made, ids))
    return table


def samples_table(frame: pd.DataFrame, holdout_fraction: float, default_split: str) -> pa.Table:
    """Validated sample rows; a missing split is assigned from the id (see :mod:`annotations.store.splits`)."""
    what = "add_samples"
    if default_split not in DEFAULT_SPLITS:
        raise StoreError(f"{what}: default_split must be one of {DEFAULT_SPLITS}, got {default_split!r}")
    n = len(frame)
    split = frame["split"] if "split" in frame.columns else pd.Series([None] * n, dtype=object)
    split_arr = pa.array(split, from_pandas=True).cast(pa.string())
    missing = np.asarray(split_arr.is_null())
    if missing.any():
        ids = frame["sample_id"].astype(object).to_numpy()
        if pd.isna(ids[missing]).any():
            row = int(np.flatnonzero(pd.isna(ids))[0])
            raise StoreError(f"{what}: column 'sample_id' is empty (null/NaN) in row {row}; every row needs it")
        assigned = np.asarray(split_arr.to_pylist(), dtype=object)
        assigned[missing] = assign_splits(ids[missing].tolist(), holdout_fraction, default_split)
        split_arr = pa.array(assigned, pa.string())
    table = _to_table(frame, samples_schema(), what, given={"split": split_arr}, defaults={"created_at": _now()})
    _check_values(table, "split", SPLITS, what)
    empty = pc.equal(pc.utf8_length(table["sample_id"]), 0)
    if pc.any(empty).as_py():
        raise StoreError(f"{what}: an empty sample_id; every sample needs a non-empty id")
    for col in ("width", "height"):
        if pc.any(pc.less_equal(table[col], 0)).as_py():
            raise StoreError(f"{what}: column {col!r} must be > 0 (image size in pixels)")
    return table


def reviews_table(frame: pd.DataFrame) -> pa.Table:
    """Validated review events (``updated_at`` defaults to now)."""
    table = _to_table(frame, reviews_schema(), "add_reviews", defaults={"updated_at": _now()})
    _check_values(table, "status", REVIEW_STATUSES, "add_reviews")
    return table


def rejects_table(frame: pd.DataFrame) -> pa.Table:
    """Validated reject rows (``created_at`` defaults to now)."""
    return _to_table(frame, rejects_schema(), "add_rejects", defaults={"created_at": _now()})


def first_of_each(table: pa.Table, column: str) -> pa.Table:
    """Drop rows whose ``column`` value already appeared in an earlier row of the table."""
    if table.num_rows < 2:
        return table
    codes = pc.dictionary_encode(table[column].combine_chunks()).indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    if len(first) == table.num_rows:
        return table
    return table.take(pa.array(np.sort(first)))


def not_in(values: pa.ChunkedArray | pa.Array, existing: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """(R,) bool: entries of ``values`` absent from ``existing``."""
    if len(existing) == 0:
        return np.ones(len(values), dtype=bool)
    if isinstance(existing, pa.ChunkedArray):
        existing = existing.combine_chunks()
    return np.asarray(pc.invert(pc.is_in(values, value_set=existing)).to_numpy(zero_copy_only=False), dtype=bool)


def examples(values: Sequence[Any], k: int = 3) -> str:
    """The first ``k`` values for an error message."""
    shown = ", ".join(repr(v) for v in list(values)[:k])
    return shown + (", ..." if len(values) > k else "")


# Natural keys of event tables: everything but the recording time (and the free-text note), so the same
# event written twice (a retried sync) lands once. A review event's annotated_at (the server's time of
# the annotation version) is part of it: a completed -> rejected -> completed flip is three events.
REVIEW_KEY = ("sample_id", "round", "status", "project_id", "task_id", "label_id", "annotation_id", "annotated_at")
REJECT_KEY = ("stage", "source", "location", "sample_id", "round", "reason")


def new_states(table: pa.Table, old: pa.Table, key: Sequence[str]) -> pa.Table:
    """Review events of ``table`` that change their sample's state, in time order.

    Reviews are a state log: an event repeats only when it equals its sample's *latest* event (the
    stored one, or the previous one of the batch). Deduplicating against the whole history instead
    would drop the last step of a completed -> rejected -> completed flip and leave the sample rejected.

    Args:
        table: New events (``updated_at`` filled in); rows of one time are in the order they happened.
        old: Stored events (the ``key`` columns, ``sample_id`` and ``updated_at``), in write order.
        key: The natural key columns.
    """
    latest: dict[str, str] = {}
    if old.num_rows:
        order = np.lexsort((np.arange(old.num_rows), old["updated_at"].cast(pa.int64()).to_numpy()))
        for sid, k in zip(old["sample_id"].take(pa.array(order)).to_pylist(),
                          natural_keys(old, key).take(pa.array(order)).to_pylist(), strict=True):  # fmt: skip
            latest[sid] = k  # later events overwrite earlier ones
    order = np.lexsort((np.arange(table.num_rows), table["updated_at"].cast(pa.int64()).to_numpy()))
    table = table.take(pa.array(order, pa.int64()))
    keep = []
    sids, keys = table["sample_id"].to_pylist(), natural_keys(table, key).to_pylist()
    for i, (sid, k) in enumerate(zip(sids, keys, strict=True)):
        if latest.get(sid) != k:
            keep.append(i)
            latest[sid] = k
    return table.take(pa.array(keep, pa.int64()))
