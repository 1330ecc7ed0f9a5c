"""A plain CSV of labeled faces, one face per row.

Header (N = the scheme's landmark count)::

    image,box_x0,box_y0,box_x1,box_y1,x0,y0,x1,y1,...,x{N-1},y{N-1}

optionally followed by ``split``, ``dataset`` and ``annotator``, and, in files ``pipstc export`` wrote,
``source``, ``round`` and ``model_version`` (where each label came from). ``image`` is a path,
relative to ``image_root`` (default: the CSV's folder) unless absolute. Reading such a file imports
people's labels only: a row whose ``source`` is ``pseudo`` is a model's label and becomes a reject
that says so (clear its source cell to import it as a person's label); ``round`` and
``model_version`` are informational. The four box cells may all be empty: the
box is then the tight box of the landmarks. An empty landmark cell is a missing landmark (NaN),
rejected unless ``allow_missing``. Numbers are written with Python's shortest round-trip repr, so a
write followed by a read gives the same float32 values.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.formats.common import (
    FormatError,
    ImportBuilder,
    ImportResult,
    RowError,
    check_export,
    format_float,
    parse_float,
    relative_name,
    resolve_image,
)
from annotations.store.schema import SPLITS
from pipnet_core.schemes import Scheme

__all__ = ["csv_header", "read_csv", "write_csv"]

_BOX = ("box_x0", "box_y0", "box_x1", "box_y1")
_OPTIONAL = ("split", "dataset", "annotator", "source", "round", "model_version")
# Label columns pipstc's export writes after the sample columns (the label each face trains on).
_LABEL_COLUMNS = ("source", "round", "model_version", "annotator")


def csv_header(num_landmarks: int) -> list[str]:
    """The required columns for N landmarks."""
    cols = ["image", *_BOX]
    for i in range(num_landmarks):
        cols += [f"x{i}", f"y{i}"]
    return cols


def _check_header(header: list[str], n: int, path: Path) -> None:
    required = csv_header(n)
    fix = f"the header must be {','.join(required[:7])},...,x{n - 1},y{n - 1} (then optionally {','.join(_OPTIONAL)})"
    names = [h.strip() for h in header]
    if not names or names[0] != "image":
        first = names[0] if names else ""
        raise FormatError(f"{path}: wrong header (first column {first!r}, expected 'image') — {fix}")
    landmark_cols = [h for h in names if len(h) > 1 and h[0] in "xy" and h[1:].isdigit()]
    if len(landmark_cols) != 2 * n:
        raise FormatError(
            f"{path}: the header has {len(landmark_cols) // 2} landmark column pairs but scheme has {n} — "
            f"import with the scheme the file was written for, or {fix}"
        )
    missing = [c for c in required if c not in names]
    unknown = [c for c in names if c not in required and c not in _OPTIONAL]
    if missing or unknown:
        what = "; ".join(
            part
            for part in (
                f"missing column(s) {missing[:6]}" if missing else "",
                f"unknown column(s) {unknown[:6]}" if unknown else "",
            )
            if part
        )
        raise FormatError(f"{path}: wrong header ({what}) — {fix}")
    if len(set(names)) != len(names):
        raise FormatError(f"{path}: wrong header (repeated column names) — {fix}")


def _cell_float(cell: str, what: str) -> float:
    text = cell.strip()
    return float("nan") if text == "" else parse_float(text, what)


def _data_rows(reader: Any, builder: ImportBuilder) -> Iterator[tuple[str, list[str]]]:
    """(``"line k"``, cells) of every non-blank row; malformed rows become rejects."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            builder.reject(f"line {reader.line_num}", f"malformed CSV row ({e})")
            continue
        if row and any(c.strip() for c in row):
            yield f"line {reader.line_num}", row


def _parse_row(row: list[str], col: dict[str, int], n: int) -> tuple[np.ndarray, list[float] | None, str | None]:
    """Landmarks (N, 2), box (or None: the landmarks' box) and split of one row; RowError names the field."""
    landmarks = np.array(
        [[_cell_float(row[col[f"{a}{i}"]], f"field {a}{i}") for a in "xy"] for i in range(n)], dtype=np.float64
    )
    box_cells = [row[col[c]].strip() for c in _BOX]
    if all(c == "" for c in box_cells):
        box = None
    elif any(c == "" for c in box_cells):
        raise RowError(f"box cells {box_cells} are partly empty; give all four or none")
    else:
        box = [parse_float(c, f"field {name}") for c, name in zip(box_cells, _BOX, strict=True)]
    split = (row[col["split"]].strip() or None) if "split" in col else None
    if split is not None and split not in SPLITS:
        raise RowError(f"field split: {split!r} is not one of {', '.join(SPLITS)}")
    return landmarks, box, split


def read_csv(
    path: str | Path,
    scheme: Scheme,
    image_root: str | Path | None = None,
    dataset: str | None = None,
    allow_missing: bool = False,
) -> ImportResult:
    """Import a landmark CSV (see the module docstring for the columns).

    Raises:
        FormatError: the file is missing, empty, or its header is not the one for ``scheme``.
    """
    p = Path(path)
    root = Path(image_root) if image_root is not None else p.parent
    n = scheme.num_landmarks
    try:
        handle = p.open(newline="", encoding="utf-8-sig")  # utf-8-sig: spreadsheets add a BOM
    except OSError as e:
        raise FormatError(f"{p}: cannot read the CSV ({e.strerror or e}) — check the path") from None
    builder = ImportBuilder(source=str(p), scheme=scheme, dataset=dataset or p.stem, allow_missing=allow_missing)
    with handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise FormatError(f"{p}: empty file — expected a header line {','.join(csv_header(n)[:7])},...") from None
        except csv.Error as e:
            raise FormatError(f"{p}: not a CSV file ({e}) — give a comma-separated text file") from None
        _check_header(header, n, p)
        col = {h.strip(): i for i, h in enumerate(header)}
        for where, row in _data_rows(reader, builder):
            if len(row) != len(header):
                builder.reject(where, f"{len(row)} cells but the header has {len(header)} columns")
                continue
            try:
                landmarks, box, split = _parse_row(row, col, n)
            except RowError as e:
                builder.reject(where, str(e))
                continue
            image_name = row[col["image"]].strip()
            if not image_name:
                builder.reject(where, "field image is empty")
                continue
            if "source" in col and row[col["source"]].strip() == "pseudo":
                builder.reject(where, "field source: a pseudo-label (a model's, exported by pipstc), not a person's;"
                               " clear the source cell to import it as a person's label")  # fmt: skip
                continue
            annotator = (row[col["annotator"]].strip() or None) if "annotator" in col else None
            row_dataset = (row[col["dataset"]].strip() or None) if "dataset" in col else None
            builder.add(where, resolve_image(image_name, root), landmarks, box=box, annotator=annotator, split=split,
                        dataset=row_dataset)  # fmt: skip
    return builder.result()


def write_csv(
    path: str | Path,
    samples: pd.DataFrame,
    landmarks: np.ndarray,
    scheme: Scheme,
    image_root: str | Path | None = None,
) -> Path:
    """Write labels as a landmark CSV (round-trip exact).

    Args:
        path: Output ``.csv``.
        samples: Rows with ``image_uri`` and ``box`` (and ``split``/``dataset`` and the label columns
            ``source``, ``round``, ``model_version``, ``annotator`` if present), aligned with ``landmarks``.
        landmarks: (R, N, 2) image pixels; NaN becomes an empty cell.
        scheme: Checked against N.
        image_root: Image paths are written relative to it (default: the CSV's folder) when under it.
    """
    lms = np.asarray(landmarks, dtype=np.float32)
    check_export(samples, lms, scheme, ["image_uri", "box"])
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    root = image_root if image_root is not None else p.parent
    extra = [c for c in ("split", "dataset", *_LABEL_COLUMNS) if c in samples.columns]
    with p.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(scheme.num_landmarks) + extra)
        for row, pts in zip(samples.to_dict("records"), lms, strict=True):
            cells = [relative_name(str(row["image_uri"]), root)]
            cells += [format_float(v) for v in np.asarray(row["box"], dtype=np.float32)]
            cells += ["" if np.isnan(v) else format_float(v) for v in pts.reshape(-1)]
            cells += ["" if row.get(c) is None or pd.isna(row[c]) else str(row[c]) for c in extra]
            writer.writerow(cells)
    return p
