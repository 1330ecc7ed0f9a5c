"""Explicit pyarrow schemas of the label store (docs/store.md section 3).

Every Parquet file the store writes carries ``pipstc.table`` and ``pipstc.schema_version`` in its
schema metadata; readers check both before trusting a file. Landmarks are a fixed-size list of N
fixed-size (x, y) float32 pairs in original image pixels (NaN = missing); per-landmark confidence is
a fixed-size list of N float32 beside them.

Vocabulary (docs/store.md section 3): ``split`` is ``train`` | ``holdout`` | ``pool``; a label's
``source`` is ``human`` | ``corrected`` | ``pseudo``; a pseudo-label's curriculum ``level`` is ``std`` |
``cls2`` | ``cls3`` (or ``review`` when routed to people and kept out of training); a review's
``status`` is ``pushed`` | ``completed`` | ``skipped`` | ``rejected`` | ``retracted`` (the reviewer's
annotation was deleted in Label Studio).

Per-landmark ``visibility`` follows COCO's keypoint ``v``: 0 = not labeled (the landmark is NaN),
1 = labeled but occluded (the position is an estimate), 2 = visible; null = not recorded (every
finite landmark counts as visible). A label row whose ``retracts`` names another label id is a
*retraction record*: the store stays append-only, and the named label no longer counts
(:mod:`annotations.store.retractions`).

Columns added after schema version 1 was first written (:data:`ADDED_COLUMNS`) may be absent from
older parts; readers see them as null there (a pyarrow dataset fills a missing field with nulls), so
stores written before them open unchanged and a schema migration can list them as added columns.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = [
    "ADDED_COLUMNS",
    "LABEL_SOURCES",
    "LEVELS",
    "REVIEW_STATUSES",
    "SCHEMA_VERSION",
    "SOURCE_PRIORITY",
    "SPLITS",
    "VISIBILITY",
    "SchemaMismatch",
    "check_table_schema",
    "labels_schema",
    "landmarks_from_arrow",
    "landmarks_to_arrow",
    "rejects_schema",
    "reviews_schema",
    "samples_schema",
    "table_schema",
]

# 1: the first stores; 2: samples.image_digest (the holdout guard by image content). Older stores are
# migrated by annotations.store.migrate, which says how each added column is filled.
SCHEMA_VERSION = 2
SPLITS = ("train", "holdout", "pool")
LABEL_SOURCES = ("human", "corrected", "pseudo")
# Priority of the training view: human > corrected > pseudo.
SOURCE_PRIORITY = {"human": 0, "corrected": 1, "pseudo": 2}
LEVELS = ("std", "cls2", "cls3", "review")
REVIEW_STATUSES = ("pushed", "completed", "skipped", "rejected", "retracted")
# COCO keypoint visibility codes (cocodataset.org/#format-data): not labeled, occluded, visible.
VISIBILITY = {"missing": 0, "occluded": 1, "visible": 2}
# Nullable columns added to a table after its schema version was first written: parts written before
# lack them and read as null there. (table -> column names, in schema order.)
ADDED_COLUMNS = {"labels": ("visibility", "retracts"), "reviews": ("annotated_at",)}

_TS = pa.timestamp("us", tz="UTC")


def _fixed(value_type: pa.DataType, size: int) -> pa.FixedSizeListType:
    """A fixed-size list whose items are never null.

    Non-nullable items let Parquet skip definition levels: measured on 200k labels of 68 landmarks,
    writes ~1.4x and reads ~1.6x faster than nullable items, same bytes. Missing landmarks are NaN
    values, never null items.
    """
    return pa.list_(pa.field("item", value_type, nullable=False), size)


def _landmarks_type(n: int) -> pa.FixedSizeListType:
    """(N, 2) landmarks: N (x, y) float32 pairs."""
    return _fixed(_fixed(pa.float32(), 2), n)


class SchemaMismatch(ValueError):
    """A Parquet file's schema is not the one this version of pipstc writes."""


def _meta(table: str) -> dict[bytes, bytes]:
    return {b"pipstc.table": table.encode(), b"pipstc.schema_version": str(SCHEMA_VERSION).encode()}


def samples_schema() -> pa.Schema:
    """One row per face. ``box`` is (x0, y0, x1, y1) in image pixels."""
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),  # content hash of image bytes + box
            pa.field("image_uri", pa.string(), nullable=False),
            # sha256 of the image file's bytes (the image half of sample_id): faces of one image share it.
            # Null only where it could not be known (a migrated sample whose image was unreadable).
            pa.field("image_digest", pa.string()),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("box", _fixed(pa.float32(), 4), nullable=False),
            pa.field("box_source", pa.string()),  # "landmarks", "given", "detector:<name>"
            pa.field("detector_score", pa.float32()),
            pa.field("split", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("created_at", _TS, nullable=False),
        ],
        metadata=_meta("samples"),
    )


def labels_schema(num_landmarks: int) -> pa.Schema:
    """Append-only label rows for a scheme with ``num_landmarks`` landmarks."""
    n = num_landmarks
    return pa.schema(
        [
            pa.field("label_id", pa.string(), nullable=False),
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("landmarks", _landmarks_type(n), nullable=False),  # (N, 2) image px
            pa.field("landmark_confidence", _fixed(pa.float32(), n)),  # (N,) in [0, 1], pseudo only
            pa.field("face_confidence", pa.float32()),  # in [0, 1], higher is surer
            pa.field("predicted_nme", pa.float32()),  # calibrated predicted NME of the face
            pa.field("level", pa.string()),  # std | cls2 | cls3 | review (pseudo only)
            pa.field("model_version", pa.string()),
            pa.field("annotator", pa.string()),
            pa.field("ls_task_id", pa.int64()),
            pa.field("ls_annotation_id", pa.int64()),
            pa.field("parent_label_id", pa.string()),  # for corrections: the pseudo-label corrected
            pa.field("moved", _fixed(pa.bool_(), n)),  # for corrections: landmarks the person moved
            pa.field("created_at", _TS, nullable=False),
            pa.field("visibility", _fixed(pa.int8(), n)),  # (N,) COCO v: 0 missing, 1 occluded, 2 visible
            pa.field("retracts", pa.string()),  # a retraction record: the label id it withdraws
        ],
        metadata=_meta("labels") | {b"pipstc.num_landmarks": str(n).encode()},
    )


def reviews_schema() -> pa.Schema:
    """Review events in time order; the newest row per sample is its review's state.

    ``updated_at`` is when pipstc recorded the event (one clock orders them all); ``annotated_at`` is
    the Label Studio server's time of the annotation (or task change) a pulled event reflects, so two
    versions of one annotation are two events.
    """
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("status", pa.string(), nullable=False),
            pa.field("project_id", pa.int64()),
            pa.field("task_id", pa.int64()),
            pa.field("label_id", pa.string()),  # the pseudo-label shown as prediction
            pa.field("annotation_id", pa.int64()),
            pa.field("note", pa.string()),
            pa.field("updated_at", _TS, nullable=False),
            pa.field("annotated_at", _TS),
        ],
        metadata=_meta("reviews"),
    )


def rejects_schema() -> pa.Schema:
    """Inputs that could not be used, with where and why (never silently dropped)."""
    return pa.schema(
        [
            pa.field("stage", pa.string(), nullable=False),  # import | pool | train | pseudo | review
            pa.field("source", pa.string(), nullable=False),  # file path or URI
            pa.field("location", pa.string()),  # "line 12", "field x3", "annotation 7"...
            pa.field("sample_id", pa.string()),
            pa.field("round", pa.int32()),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("created_at", _TS, nullable=False),
        ],
        metadata=_meta("rejects"),
    )


def table_schema(table: str, num_landmarks: int | None = None) -> pa.Schema:
    """The schema of a store table by name."""
    if table == "labels":
        if num_landmarks is None:
            raise ValueError("labels schema needs num_landmarks")
        return labels_schema(num_landmarks)
    return {"samples": samples_schema, "reviews": reviews_schema, "rejects": rejects_schema}[table]()


def check_table_schema(schema: pa.Schema, table: str, source: str, num_landmarks: int | None = None) -> None:
    """Refuse a file that is not a pipstc ``table`` file of this schema version.

    Raises:
        SchemaMismatch: names ``source`` and what differs.
    """
    meta = schema.metadata or {}
    got_table = meta.get(b"pipstc.table", b"").decode()
    if got_table != table:
        raise SchemaMismatch(
            f"{source}: not a pipstc {table!r} file (table tag {got_table or 'missing'!r}); remove it from the store"
            " or move it elsewhere"
        )
    version = meta.get(b"pipstc.schema_version", b"").decode()
    if version != str(SCHEMA_VERSION):
        raise SchemaMismatch(
            f"{source}: schema version {version or 'missing'!r}, this pipstc reads version {SCHEMA_VERSION};"
            " upgrade pipstc (newer file) or migrate the store (older file)"
        )
    expected = table_schema(table, num_landmarks)
    for name in ADDED_COLUMNS.get(table, ()):
        if name not in schema.names:  # a part written before the column existed: read as null
            expected = expected.remove(expected.get_field_index(name))
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        raise SchemaMismatch(f"{source}: columns differ from the {table!r} schema version {SCHEMA_VERSION}")


def landmarks_to_arrow(landmarks: np.ndarray) -> pa.FixedSizeListArray:
    """(R, N, 2) float -> Arrow fixed-size list of N (x, y) float32 pairs, zero-copy where possible."""
    arr = np.ascontiguousarray(landmarks, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 2:
        raise ValueError(f"landmarks must have shape (R, N, 2), got {arr.shape}")
    r, n, _ = arr.shape
    flat = pa.array(arr.reshape(-1), type=pa.float32())
    pairs = pa.FixedSizeListArray.from_arrays(flat, type=_fixed(pa.float32(), 2))
    return pa.FixedSizeListArray.from_arrays(pairs, type=_landmarks_type(n))


def landmarks_from_arrow(column: pa.Array | pa.ChunkedArray, num_landmarks: int) -> np.ndarray:
    """Arrow fixed-size list column -> (R, N, 2) float32 array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, num_landmarks, 2), dtype=np.float32)
    values = column.flatten().flatten()
    return values.to_numpy(zero_copy_only=False).reshape(len(column), num_landmarks, 2)
