"""Label views: what the store hands out, and the vectorised choices behind them.

A :class:`LabelView` is a DataFrame of the scalar label columns plus the landmark arrays aligned with
its rows; landmarks never become per-row Python objects (1M labels of 68 landmarks are 1M x 544
bytes, one numpy array). The current-label choice (human > corrected > pseudo, newest round first,
then newest ``created_at``, then the newest write) is one ``np.lexsort`` over integer keys, not a
pandas groupby.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from annotations.store.schema import SOURCE_PRIORITY, SPLITS, labels_schema

__all__ = [
    "LIST_COLUMNS",
    "SCALAR_COLUMNS",
    "LabelView",
    "build_view",
    "choose_current",
    "codes_of",
    "gather_fixed",
    "latest_per_group",
    "priorities",
    "to_pandas",
]

LIST_COLUMNS = ("landmarks", "landmark_confidence", "moved", "visibility")
# Every scalar column of labels_schema, in schema order (the frame of a LabelView, plus "split").
SCALAR_COLUMNS = tuple(f.name for f in labels_schema(2) if f.name not in LIST_COLUMNS)
_SOURCES_BY_PRIORITY = tuple(sorted(SOURCE_PRIORITY, key=SOURCE_PRIORITY.get))


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """Arrow -> pandas; int64 ids (Label Studio task/annotation ids) stay integers with <NA> for missing."""
    return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


@dataclass
class LabelView:
    """Labels with their landmarks.

    Attributes:
        frame: One row per label: the scalar columns of labels_schema and ``split`` (the sample's split).
        landmarks: (R, N, 2) float32 image px (NaN = missing), aligned with ``frame`` rows.
        landmark_confidence: (R, N) float32 (NaN where a label has none), or None when no label has any.
        moved: (R, N) bool landmarks a person moved (corrections; False elsewhere), or None when no label
            records it.
        visibility: (R, N) int8 COCO visibility (0 missing, 1 occluded, 2 visible; rows that record none
            get 0 for NaN landmarks and 2 otherwise), or None when no label records it.
    """

    frame: pd.DataFrame
    landmarks: np.ndarray
    landmark_confidence: np.ndarray | None
    moved: np.ndarray | None = None
    visibility: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frame)

    def take(self, rows: np.ndarray | Sequence[int]) -> LabelView:
        """The view of the given row positions (or a boolean mask), in that order."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return LabelView(
            frame=self.frame.iloc[idx].reset_index(drop=True),
            landmarks=self.landmarks[idx],
            landmark_confidence=None if self.landmark_confidence is None else self.landmark_confidence[idx],
            moved=None if self.moved is None else self.moved[idx],
            visibility=None if self.visibility is None else self.visibility[idx],
        )

    @property
    def sample_ids(self) -> np.ndarray:
        """Sample id of each row, (R,) object array."""
        return self.frame["sample_id"].to_numpy(dtype=object)


def _leaf(chunk: pa.Array) -> tuple[pa.Array, int]:
    """The leaf values backing a (nested) fixed-size list chunk and their count per row."""
    start, length, width = 0, len(chunk), 1
    arr = chunk
    while pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        # values ignore the parent's offset: logical row j of arr is child slot (arr.offset + j) * size
        start, length = (arr.offset + start) * size, length * size
        width *= size
        arr = arr.values
    return arr.slice(start, length), width


def gather_fixed(
    column: pa.ChunkedArray | pa.Array, rows: np.ndarray | None, tail: tuple[int, ...], dtype: type, fill: object
) -> np.ndarray:
    """Rows of a fixed-size list column as one numpy array, copying each value once.

    Args:
        column: A (nested) fixed-size list column.
        rows: Sorted row positions to take, or None for all rows.
        tail: The per-row shape, e.g. (N, 2).
        dtype: numpy dtype of the result.
        fill: Value of rows that are null.

    Returns:
        (len(rows), *tail) array.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    total = sum(len(c) for c in chunks)
    count = total if rows is None else len(rows)
    out = np.empty((count, *tail), dtype=dtype)
    start = 0
    for chunk in chunks:
        n = len(chunk)
        if rows is None:
            a, b = start, start + n
            local = None
        else:
            a, b = np.searchsorted(rows, [start, start + n])
            local = rows[a:b] - start
        if b > a and chunk.null_count == n:  # a part written without the column (or none set it)
            out[a:b] = fill
        elif b > a:
            leaf, width = _leaf(chunk)
            values = leaf.to_numpy(zero_copy_only=False).reshape(n, *tail)
            if local is None:
                out[a:b] = values
            elif local[-1] - local[0] + 1 == len(local):  # a run of rows: one memcpy instead of a gather
                out[a:b] = values[local[0] : local[-1] + 1]
            else:
                np.take(values, local, axis=0, out=out[a:b])
            if chunk.null_count:
                nulls = np.asarray(chunk.is_null().to_numpy(zero_copy_only=False))
                out[a:b][nulls if local is None else nulls[local]] = fill
        start += n
    return out


def choose_current(
    sample_code: np.ndarray, priority: np.ndarray, round_: np.ndarray, created: np.ndarray, keep: np.ndarray
) -> np.ndarray:
    """Row positions of the current label of every sample, in store order.

    Per sample: lowest ``priority`` (human 0 < corrected 1 < pseudo 2), then highest round, then newest
    ``created``, then the row written last.

    Args:
        sample_code: (R,) int64 sample of each row (any integer code).
        priority: (R,) source priority.
        round_: (R,) round.
        created: (R,) int64 creation time.
        keep: (R,) bool rows that may be chosen.
    """
    cand = np.flatnonzero(keep)[::-1]  # reversed: the stable sort then puts later rows first on ties
    if len(cand) == 0:
        return cand
    group = sample_code[cand].astype(np.int64) * 4 + priority[cand]
    order = np.lexsort((-created[cand], -round_[cand].astype(np.int64), group))
    ranked = cand[order]
    s = sample_code[ranked]
    first = np.empty(len(s), dtype=bool)
    first[0] = True
    np.not_equal(s[1:], s[:-1], out=first[1:])
    return np.sort(ranked[first])


def latest_per_group(group_code: np.ndarray, time: np.ndarray) -> np.ndarray:
    """Row position of the newest row (by ``time``, then the later row) of each group, in store order."""
    if len(group_code) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(group_code)), time, group_code))
    g = group_code[order]
    last = np.empty(len(g), dtype=bool)
    last[-1] = True
    np.not_equal(g[:-1], g[1:], out=last[:-1])
    return np.sort(order[last])


def codes_of(column: pa.ChunkedArray | pa.Array, values: Sequence[str]) -> np.ndarray:
    """(R,) int8 position of each entry in ``values`` (-1 for null or unknown)."""
    idx = pc.index_in(column, value_set=pa.array(list(values), pa.string()))
    return np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), dtype=np.int8)


def priorities(source: pa.ChunkedArray) -> np.ndarray:
    """(R,) int8 source priority (human 0, corrected 1, pseudo 2)."""
    return codes_of(source, _SOURCES_BY_PRIORITY)


def build_view(table: pa.Table, rows: np.ndarray | None, split_codes: np.ndarray, num_landmarks: int) -> LabelView:
    """A LabelView of ``table`` rows (sorted positions, or None for all).

    Args:
        table: Label rows with every labels_schema column.
        rows: Sorted row positions, or None.
        split_codes: (len(rows),) index into SPLITS of each chosen row's sample (-1 unknown).
        num_landmarks: N.
    """
    if rows is not None and len(rows) == table.num_rows:
        rows = None  # sorted, unique and all of them: the identity, nothing to take
    scalar = table.select(list(SCALAR_COLUMNS))
    if rows is not None:
        scalar = scalar.take(pa.array(rows, pa.int64()))
    split = pa.DictionaryArray.from_arrays(
        pa.array(split_codes, pa.int8(), mask=split_codes < 0), pa.array(list(SPLITS), pa.string())
    ).dictionary_decode()
    frame = to_pandas(scalar.append_column("split", split))
    n = num_landmarks
    landmarks = gather_fixed(table["landmarks"], rows, (n, 2), np.float32, np.nan)
    length = len(frame)
    arrays = {}
    optional = (("landmark_confidence", np.float32, np.nan), ("moved", np.bool_, False), ("visibility", np.int8, -1))
    for name, dtype, fill in optional:
        col = table[name]
        if col.null_count == len(col) or length == 0:
            arrays[name] = None
            continue
        nulls = col.is_null().to_numpy(zero_copy_only=False)
        chosen = nulls if rows is None else nulls[rows]
        arrays[name] = None if chosen.all() else gather_fixed(col, rows, (n,), dtype, fill)
    vis = arrays["visibility"]
    if vis is not None:  # rows that record none: missing where NaN, visible elsewhere
        unknown = vis[:, 0] < 0
        vis[unknown] = np.where(np.isnan(landmarks[unknown, :, 0]), 0, 2)
    return LabelView(
        frame=frame,
        landmarks=landmarks,
        landmark_confidence=arrays["landmark_confidence"],
        moved=arrays["moved"],
        visibility=vis,
    )
