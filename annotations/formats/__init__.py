"""Dataset formats in and out: 300W ``.pts`` folders, WFLW lines, COCO keypoints, CSV, Label Studio exports.

Every reader returns an :class:`ImportResult` (samples, labels + landmarks, rejects) that the store
takes as it is; :data:`FORMATS` maps a format name to its reader (and writer, where the format is
exported), :func:`read_any` / :func:`write_any` dispatch by name (the CLI's ``--format``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.formats.coco import read_coco, write_coco
from annotations.formats.common import (
    FormatError,
    ImportResult,
    RowError,
    concat_results,
    empty_result,
    landmark_box,
    landmark_boxes,
)
from annotations.formats.csv import read_csv, write_csv
from annotations.formats.labelstudio_export import read_labelstudio_export
from annotations.formats.pts import read_pts, read_pts_folder, write_pts, write_pts_file
from annotations.formats.wflw import WFLW_ATTRIBUTES, read_wflw, write_wflw
from pipnet_core.schemes import Scheme

__all__ = [
    "FORMATS",
    "WFLW_ATTRIBUTES",
    "FormatError",
    "FormatSpec",
    "ImportResult",
    "RowError",
    "concat_results",
    "empty_result",
    "landmark_box",
    "landmark_boxes",
    "read_any",
    "read_coco",
    "read_csv",
    "read_labelstudio_export",
    "read_pts",
    "read_pts_folder",
    "read_wflw",
    "write_any",
    "write_coco",
    "write_csv",
    "write_pts",
    "write_pts_file",
    "write_wflw",
]


@dataclass(frozen=True)
class FormatSpec:
    """One dataset format. Calling it reads (``FORMATS["csv"](path, scheme)``).

    Attributes:
        name: Registry key.
        read: ``read(path, scheme, **kw) -> ImportResult``; ``path`` is a file or folder as the
            format needs.
        write: ``write(path, samples, landmarks, scheme, **kw)``, or None for import-only formats.
        path_is: ``"folder"`` or ``"file"``, what ``path`` names.
        description: One line for ``--help``.
    """

    name: str
    read: Callable[..., ImportResult]
    write: Callable[..., Any] | None
    path_is: str
    description: str

    def __call__(self, path: str | Path, scheme: Scheme, **kw: Any) -> ImportResult:
        return self.read(path, scheme, **kw)


def _read_wflw(path: str | Path, scheme: Scheme, image_root: str | Path | None = None, **kw: Any) -> ImportResult:
    return read_wflw(path, image_root if image_root is not None else Path(path).parent, scheme, **kw)


def _read_coco(path: str | Path, scheme: Scheme, image_root: str | Path | None = None, **kw: Any) -> ImportResult:
    return read_coco(path, image_root, scheme, **kw)


FORMATS: dict[str, FormatSpec] = {
    "pts": FormatSpec("pts", read_pts_folder, write_pts, "folder", "300W/iBUG folder: <name>.pts beside each image"),
    "wflw": FormatSpec(
        "wflw", _read_wflw, write_wflw, "file", "WFLW annotation lines: 2N coords, box, 6 attributes, image"
    ),
    "coco": FormatSpec("coco", _read_coco, write_coco, "file", "COCO keypoints JSON"),
    "csv": FormatSpec("csv", read_csv, write_csv, "file", "CSV: image,box_x0..box_y1,x0,y0,...,x{N-1},y{N-1}"),
    "labelstudio": FormatSpec(
        "labelstudio", read_labelstudio_export, None, "file", "Label Studio JSON / JSON_MIN export of a pipstc project"
    ),
}


def _spec(fmt: str) -> FormatSpec:
    spec = FORMATS.get(fmt.lower())
    if spec is None:
        raise FormatError(f"--format {fmt}: unknown format — use one of {', '.join(FORMATS)}")
    return spec


def read_any(fmt: str, path: str | Path, scheme: Scheme, **kw: Any) -> ImportResult:
    """Read ``path`` in format ``fmt`` (a key of :data:`FORMATS`); ``kw`` go to the reader."""
    return _spec(fmt).read(path, scheme, **kw)


def write_any(
    fmt: str, path: str | Path, samples: pd.DataFrame, landmarks: np.ndarray, scheme: Scheme, **kw: Any
) -> Any:
    """Write labels in format ``fmt``; raises :class:`FormatError` for import-only formats."""
    spec = _spec(fmt)
    if spec.write is None:
        raise FormatError(
            f"format {fmt!r} is import-only — export to one of {', '.join(k for k, s in FORMATS.items() if s.write)}"
        )
    return spec.write(path, samples, landmarks, scheme, **kw)
