"""300W / iBUG ``.pts`` folders: one landmark file beside each image.

The format (Sagonas et al., "300 Faces in-the-Wild Challenge", ICCV-W 2013; the iBUG annotation
files)::

    version: 1
    n_points:  68
    {
    x0 y0
    ...
    }

Coordinates are image pixels, kept exactly as written (300W's are MATLAB-style, about 1-based; the
official PIPNet preprocessing uses them unchanged, and so do we). An image holding several faces has
one file per face named ``<image stem>_<k>.pts`` (the AFW layout); a file whose stem matches no image
falls back to that base name. The face box of an imported label is the tight box of its landmarks.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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
)
from pipnet_core.images import IMAGE_EXTENSIONS
from pipnet_core.schemes import Scheme

__all__ = ["read_pts", "read_pts_folder", "write_pts", "write_pts_file"]

_MULTI_FACE = re.compile(r"^(?P<base>.+)_(?P<k>\d+)$")


def read_pts(path: str | Path) -> np.ndarray:
    """Read one ``.pts`` file.

    Returns:
        (n, 2) float64 pixels, n as the file says (the caller checks it against the scheme).

    Raises:
        RowError: the message starts with the line number and says what is wrong.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise RowError(f"cannot read the file ({e.strerror or e})") from None
    declared: int | None = None
    start = None
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("{"):
            start = i + 1
            break
        if text.lower().startswith("n_points"):
            value = text.split(":", 1)[-1].strip()
            try:
                declared = int(value)
            except ValueError:
                raise RowError(f"line {i + 1}: n_points {value!r} is not an integer") from None
    if start is None:
        raise RowError(
            "no '{' line: not a 300W .pts file (expected 'version: 1', 'n_points: N', '{', N lines 'x y', '}')"
        )
    rows: list[tuple[float, float]] = []
    closed = False
    for i in range(start, len(lines)):
        text = lines[i].strip()
        if not text:
            continue
        if text.startswith("}"):
            closed = True
            break
        tokens = text.split()
        k = len(rows)
        if len(tokens) != 2:
            raise RowError(f"line {i + 1}: landmark {k} needs 2 values 'x y', found {len(tokens)}: {text!r}")
        rows.append(
            (
                parse_float(tokens[0], f"line {i + 1} x of landmark {k}"),
                parse_float(tokens[1], f"line {i + 1} y of landmark {k}"),
            )
        )
    if not closed:
        raise RowError(f"line {len(lines)}: missing the closing '}}' (file truncated?)")
    if declared is not None and declared != len(rows):
        raise RowError(f"n_points says {declared} but {len(rows)} landmark lines follow")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def _image_index(folder: Path) -> dict[str, Path]:
    """Lower-case stem -> image path for one folder (first by extension priority)."""
    index: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        ext = f.suffix.lower()
        if ext in IMAGE_EXTENSIONS and f.is_file():
            stem = f.stem.lower()
            if stem not in index or IMAGE_EXTENSIONS.index(ext) < IMAGE_EXTENSIONS.index(index[stem].suffix.lower()):
                index[stem] = f
    return index


def _find_image(pts_path: Path, indexes: dict[Path, dict[str, Path]]) -> Path | None:
    folder = pts_path.parent
    if folder not in indexes:
        indexes[folder] = _image_index(folder)
    index = indexes[folder]
    stem = pts_path.stem.lower()
    if stem in index:
        return index[stem]
    m = _MULTI_FACE.match(stem)
    if m and m.group("base") in index:
        return index[m.group("base")]
    return None


def read_pts_folder(
    folder: str | Path,
    scheme: Scheme,
    dataset: str | None = None,
    recursive: bool = True,
    allow_missing: bool = False,
) -> ImportResult:
    """Import a 300W-style folder: every ``.pts`` with its image beside it.

    Args:
        folder: Root folder.
        scheme: The scheme every file must match (68 landmarks for 300W).
        dataset: Dataset name of the samples (default: the folder's name).
        recursive: Also walk sub-folders (300W ships as ``afw/``, ``helen/trainset/``...).
        allow_missing: Keep ``nan`` coordinates as missing landmarks instead of rejecting the file.

    Raises:
        FormatError: the folder does not exist or holds no ``.pts`` file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FormatError(f"{root}: not a folder — give the folder that holds the .pts files and their images")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.suffix.lower() == ".pts" and p.is_file())
    if not files:
        raise FormatError(
            f"{root}: no .pts files found{' (searched sub-folders too)' if recursive else ''} — "
            "a 300W folder holds <name>.pts beside <name>.jpg/.png"
        )
    builder = ImportBuilder(
        source=str(root), scheme=scheme, dataset=dataset or root.resolve().name, allow_missing=allow_missing
    )
    indexes: dict[Path, dict[str, Path]] = {}
    for pts_path in files:
        src = str(pts_path)
        try:
            landmarks = read_pts(pts_path)
        except RowError as e:
            builder.reject("file", str(e), source=src)
            continue
        image = _find_image(pts_path, indexes)
        if image is None:
            looked = ", ".join(pts_path.stem + e for e in (".jpg", ".png", ".bmp", "..."))
            builder.reject("file", f"missing image: no image beside it (looked for {looked})", source=src)
            continue
        builder.add("file", image, landmarks, source=src)
    return builder.result()


def write_pts_file(path: str | Path, landmarks: np.ndarray) -> Path:
    """Write (N, 2) landmarks as a 300W ``.pts`` file with round-trip-exact numbers."""
    pts = np.asarray(landmarks, dtype=np.float32).reshape(-1, 2)
    body = "".join(f"{format_float(x)} {format_float(y)}\n" for x, y in pts)
    p = Path(path)
    p.write_text(f"version: 1\nn_points:  {len(pts)}\n{{\n{body}}}\n", encoding="utf-8")
    return p


def write_pts(
    folder: str | Path,
    samples: pd.DataFrame,
    landmarks: np.ndarray,
    scheme: Scheme,
    copy_images: bool = True,
) -> list[Path]:
    """Export labels as a 300W folder: each image copied in, a ``.pts`` beside it.

    Args:
        folder: Output folder (created).
        samples: Rows with at least ``image_uri`` (a local path), aligned with ``landmarks``.
        landmarks: (R, N, 2) image pixels; NaN is written as ``nan`` (read back with allow_missing).
        scheme: Checked against N.
        copy_images: Copy each image beside its ``.pts`` (what the importer needs); off when the
            images are already in ``folder``.

    Returns:
        The ``.pts`` paths, in the order of ``samples``.
    """
    lms = np.asarray(landmarks, dtype=np.float32)
    check_export(samples, lms, scheme, ["image_uri"])
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    uris = [str(u) for u in samples["image_uri"]]
    counts: dict[str, int] = {}
    for u in uris:
        counts[u] = counts.get(u, 0) + 1
    names: dict[str, str] = {}  # image uri -> output stem
    used: set[str] = set()
    seen: dict[str, int] = {}
    paths: list[Path] = []
    for uri, pts in zip(uris, lms, strict=True):
        src = Path(uri)
        if uri not in names:
            if copy_images and not src.is_file():
                raise ValueError(
                    f"write_pts: image {uri} is not a local file; .pts folders need the images beside them"
                )
            stem = src.stem
            k = 1
            while stem.lower() in used:  # two different images with one name: keep both
                k += 1
                stem = f"{src.stem}-{k}"
            used.add(stem.lower())
            names[uri] = stem
            if copy_images:
                dst = out / f"{stem}{src.suffix.lower()}"
                if not dst.exists() or not dst.samefile(src):
                    shutil.copyfile(src, dst)
        stem = names[uri]
        if counts[uri] > 1:
            seen[uri] = seen.get(uri, 0) + 1
            name = f"{stem}_{seen[uri]}.pts"
        else:
            name = f"{stem}.pts"
        paths.append(write_pts_file(out / name, pts))
    return paths
