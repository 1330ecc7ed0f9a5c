"""WFLW annotation lines (Wu et al., "Look at Boundary", CVPR 2018; ``list_98pt_rect_attr_*.txt``).

One face per line, whitespace separated::

    x0 y0 ... x97 y97  x_min y_min x_max y_max  pose expression illumination make-up occlusion blur  image_name

that is 2N coordinates, the face box, six 0/1 attributes and the image path relative to the image
root (``WFLW_images/``). The line length fixes N, which must match the scheme (98 for WFLW). The box is
kept as given (``box_source="given"``); the attributes go to :attr:`ImportResult.extras` for per-
attribute metrics.
"""

from __future__ import annotations

from collections import Counter
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
    relative_name,
    resolve_image,
)
from pipnet_core.schemes import Scheme

__all__ = ["WFLW_ATTRIBUTES", "read_wflw", "write_wflw"]

# Order of the six attribute flags in WFLW's annotation lines (WFLW README).
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
_TAIL = 4 + len(WFLW_ATTRIBUTES) + 1  # box, attributes, image name


def _parse_line(tokens: list[str], n: int, where: str) -> tuple[np.ndarray, list[float], dict[str, int], str]:
    coords = tokens[: len(tokens) - _TAIL]
    if len(coords) % 2:
        raise RowError(f"{where}: {len(tokens)} values; a WFLW line is 2N coordinates + 4 box + 6 attributes + image")
    k = len(coords) // 2
    if k != n:
        raise RowError(f"{where}: {k} landmarks, but the scheme has {n}; import with the scheme the file was made for")
    values = [parse_float(t, f"{where} field {'x' if i % 2 == 0 else 'y'}{i // 2}") for i, t in enumerate(coords)]
    box_tokens = tokens[2 * k : 2 * k + 4]
    box = [
        parse_float(t, f"{where} field {name}")
        for t, name in zip(box_tokens, ("x_min", "y_min", "x_max", "y_max"), strict=True)
    ]
    attrs: dict[str, int] = {}
    for name, t in zip(WFLW_ATTRIBUTES, tokens[2 * k + 4 : 2 * k + 10], strict=True):
        try:
            attrs[name] = int(t)
        except ValueError:
            raise RowError(f"{where} field {name}: {t!r} is not an integer attribute (0 or 1)") from None
    return np.asarray(values, dtype=np.float64).reshape(k, 2), box, attrs, tokens[-1]


def read_wflw(
    annotation_file: str | Path,
    image_root: str | Path,
    scheme: Scheme,
    dataset: str | None = None,
    allow_missing: bool = False,
) -> ImportResult:
    """Import a WFLW annotation file.

    Args:
        annotation_file: The ``.txt`` with one face per line.
        image_root: Folder the image names are relative to (``WFLW_images``).
        scheme: Layout of the lines (``get_scheme("wflw")`` for WFLW itself).
        dataset: Dataset name (default: the annotation file's stem).
        allow_missing: Keep ``nan`` coordinates as missing instead of rejecting the line.

    Raises:
        FormatError: the file is missing, or no line has the shape of a WFLW line for this scheme.
    """
    path = Path(annotation_file)
    root = Path(image_root)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise FormatError(f"{path}: cannot read the annotation file ({e.strerror or e}) — check the path") from None
    builder = ImportBuilder(source=str(path), scheme=scheme, dataset=dataset or path.stem, allow_missing=allow_missing)
    n = scheme.num_landmarks
    shape_errors: Counter[int] = Counter()
    nonempty = 0
    for lineno, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        nonempty += 1
        where = f"line {lineno}"
        if len(tokens) != 2 * n + _TAIL:
            shape_errors[len(tokens)] += 1
        if len(tokens) < _TAIL + 4:
            builder.reject(
                where, f"only {len(tokens)} values; a WFLW line is 2N coordinates + 4 box + 6 attributes + image"
            )
            continue
        try:
            landmarks, box, attrs, name = _parse_line(tokens, n, where)
        except RowError as e:
            builder.reject(where, str(e).removeprefix(f"{where}: "))
            continue
        builder.add(where, resolve_image(name, root), landmarks, box=box, box_source="given", extras=attrs)
    if nonempty and shape_errors.total() == nonempty:
        count, _ = shape_errors.most_common(1)[0]
        hint = ""
        if (count - _TAIL) % 2 == 0 and count > _TAIL:
            hint = f"lines have {(count - _TAIL) // 2} landmarks: import with the scheme that has that many"
        raise FormatError(
            f"{path}: no line has the {2 * n + _TAIL} values of a WFLW line for scheme {scheme.name!r} "
            f"(2x{n} coordinates + 4 box + 6 attributes + image name); most have {count} — "
            f"{hint or 'check that it is a WFLW annotation file'}"
        )
    return builder.result()


def write_wflw(
    path: str | Path,
    samples: pd.DataFrame,
    landmarks: np.ndarray,
    scheme: Scheme,
    image_root: str | Path | None = None,
    attributes: pd.DataFrame | None = None,
) -> Path:
    """Write WFLW annotation lines (round-trip exact).

    Args:
        path: Output ``.txt``.
        samples: Rows with ``image_uri`` and ``box``, aligned with ``landmarks``.
        landmarks: (R, N, 2) image pixels.
        scheme: Checked against N.
        image_root: Image names are written relative to it (absolute paths otherwise).
        attributes: Optional rows with ``sample_id`` and the :data:`WFLW_ATTRIBUTES` columns
            (missing ones are written as 0).
    """
    lms = np.asarray(landmarks, dtype=np.float32)
    check_export(samples, lms, scheme, ["image_uri", "box"])
    attr_by_id: dict[str, dict[str, int]] = {}
    if attributes is not None and len(attributes):
        for row in attributes.to_dict("records"):
            attr_by_id[str(row["sample_id"])] = {a: int(row.get(a, 0) or 0) for a in WFLW_ATTRIBUTES}
    out: list[str] = []
    for i, (row, pts) in enumerate(zip(samples.to_dict("records"), lms, strict=True)):
        name = relative_name(str(row["image_uri"]), image_root)
        if any(ch.isspace() for ch in name):
            raise ValueError(f"row {i}: image name {name!r} has whitespace, which WFLW lines cannot hold; rename it")
        coords = " ".join(format_float(v) for v in pts.reshape(-1))
        box = " ".join(format_float(v) for v in np.asarray(row["box"], dtype=np.float32))
        flags = attr_by_id.get(str(row.get("sample_id")), {})
        attrs = " ".join(str(flags.get(a, 0)) for a in WFLW_ATTRIBUTES)
        out.append(f"{coords} {box} {attrs} {name}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(out) + ("\n" if out else ""), encoding="utf-8")
    return p
