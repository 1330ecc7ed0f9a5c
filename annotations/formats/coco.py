"""COCO keypoints JSON (Lin et al., "Microsoft COCO", ECCV 2014; cocodataset.org/#format-data).

``images`` give ``id``, ``file_name``, ``width``, ``height``; each of ``annotations`` gives
``image_id``, ``category_id``, ``keypoints`` as ``[x0, y0, v0, x1, y1, v1, ...]`` and ``bbox`` as
``[x, y, w, h]``; the category lists the keypoint names. Visibility ``v``: 0 not labeled (x = y = 0),
1 labeled but not visible, 2 labeled and visible. A ``v = 0`` landmark is imported as missing (NaN);
the ``v`` flags of each face go to :attr:`ImportResult.extras` (``visibility``). Keypoint names need
not match the scheme's, only their count (the order is the scheme's order).
"""

from __future__ import annotations

import json
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
    parse_float,
    relative_name,
    resolve_image,
)
from pipnet_core.schemes import Scheme

__all__ = ["read_coco", "write_coco"]


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FormatError(f"{path}: cannot read the COCO file ({e.strerror or e}) — check the path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}) — "
            "give a COCO keypoints JSON file (a truncated download?)"
        ) from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise FormatError(
            f"{path}: not a COCO keypoints file — the top level must be an object with 'images' and 'annotations' lists"
        )
    return data


def _id(value: Any) -> int | str | None:
    """A COCO id (a number or a string) as a lookup key; anything else (a list, an object) matches nothing."""
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _categories(data: dict[str, Any], path: Path, n: int, category: str | int | None) -> set[Any] | None:
    """Ids of the keypoint categories to import (None: any category, when the file lists none)."""
    listed = data.get("categories") or []
    if not isinstance(listed, list):
        raise FormatError(f"{path}: 'categories' is a {type(listed).__name__} — COCO gives a list of category objects")
    cats = [c for c in listed if isinstance(c, dict)]
    if category is not None:
        cats = [c for c in cats if c.get("name") == category or c.get("id") == category]
        if not cats:
            raise FormatError(f"{path}: no category named or numbered {category!r} — use a category the file lists")
    with_kp = [c for c in cats if isinstance(c.get("keypoints"), list)]
    if not with_kp:
        return None
    matching = {_id(c.get("id")) for c in with_kp if len(c["keypoints"]) == n}
    if not matching:
        counts = sorted({len(c["keypoints"]) for c in with_kp})
        raise FormatError(
            f"{path}: the categories have {counts} keypoints but the scheme has {n} — "
            "import with the scheme the file was made for"
        )
    return matching


def read_coco(
    json_path: str | Path,
    image_root: str | Path | None,
    scheme: Scheme,
    dataset: str | None = None,
    category: str | int | None = None,
    allow_missing: bool = True,
) -> ImportResult:
    """Import a COCO keypoints JSON.

    Args:
        json_path: The ``.json`` file.
        image_root: Folder the ``file_name`` values are relative to (None: the JSON's folder).
        scheme: The scheme of the keypoints.
        dataset: Dataset name (default: the JSON's stem).
        category: Import only this category (name or id).
        allow_missing: Keep ``v = 0`` landmarks as missing (the default: COCO has them by design).

    Raises:
        FormatError: not JSON, not a COCO keypoints file, or no category with the scheme's count.
    """
    path = Path(json_path)
    root = Path(image_root) if image_root is not None else path.parent
    data = _load(path)
    n = scheme.num_landmarks
    wanted = _categories(data, path, n, category)
    builder = ImportBuilder(source=str(path), scheme=scheme, dataset=dataset or path.stem, allow_missing=allow_missing)
    images: dict[Any, dict[str, Any]] = {}
    for i, img in enumerate(data["images"]):
        if isinstance(img, dict) and _id(img.get("id")) is not None and isinstance(img.get("file_name"), str):
            images[img["id"]] = img
        else:
            builder.reject(f"images[{i}]", "an image entry needs 'id' (a number) and 'file_name' (a string)")
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]" + (f" (id {ann.get('id')})" if isinstance(ann, dict) and "id" in ann else "")
        try:
            if not isinstance(ann, dict):
                raise RowError("an annotation must be an object")
            if wanted is not None and _id(ann.get("category_id")) not in wanted:
                continue  # another category (people, say): not ours, not an error
            if ann.get("iscrowd"):
                raise RowError("crowd annotation (iscrowd=1) has no per-face landmarks")
            img = images.get(_id(ann.get("image_id")))
            if img is None:
                raise RowError(f"field image_id: {ann.get('image_id')!r} is not in 'images'")
            landmarks, vis = _keypoints(ann.get("keypoints"), n)
            box = None
            bbox = ann.get("bbox")
            if bbox is not None:
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise RowError(f"field bbox: expected [x, y, w, h], got {bbox!r}")
                x, y, w, h = (parse_float(v, f"field bbox[{k}]") for k, v in enumerate(bbox))
                box = [x, y, x + w, y + h]
            width = _int_or_none(img.get("width"))
            height = _int_or_none(img.get("height"))
        except RowError as e:
            builder.reject(where, str(e))
            continue
        builder.add(
            where,
            resolve_image(img["file_name"], root),
            landmarks,
            box=box,
            box_source="given",
            width=width,
            height=height,
            extras={"visibility": vis, "coco_annotation_id": ann.get("id")},
        )
    return builder.result()


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        raise RowError(f"image size {value!r} is not an integer") from None


def _keypoints(values: Any, n: int) -> tuple[np.ndarray, list[int]]:
    if not isinstance(values, list) or not values:
        raise RowError("field keypoints: missing or empty (no landmarks)")
    if len(values) % 3:
        raise RowError(f"field keypoints: {len(values)} values, not a multiple of 3 (x, y, v per landmark)")
    if len(values) // 3 != n:
        raise RowError(f"field keypoints: {len(values) // 3} landmarks, but the scheme has {n}")
    flat = [parse_float(v, f"field keypoints[{k}]") for k, v in enumerate(values)]
    arr = np.asarray(flat, dtype=np.float64).reshape(n, 3)
    vis = arr[:, 2]
    bad = np.flatnonzero(~np.isin(vis, (0, 1, 2)))
    if len(bad):
        k = int(bad[0])
        raise RowError(
            f"field keypoints[{3 * k + 2}]: visibility {values[3 * k + 2]!r} of landmark {k} must be 0, 1 or 2"
        )
    pts = arr[:, :2].copy()
    pts[vis == 0] = np.nan
    return pts, [int(v) for v in vis]


def write_coco(
    path: str | Path,
    samples: pd.DataFrame,
    landmarks: np.ndarray,
    scheme: Scheme,
    image_root: str | Path | None = None,
    category_name: str = "face",
    visibility: np.ndarray | None = None,
) -> Path:
    """Write labels as COCO keypoints JSON (round-trip exact).

    Args:
        path: Output ``.json``.
        samples: Rows with ``image_uri``, ``width``, ``height`` and ``box``, aligned with ``landmarks``.
        landmarks: (R, N, 2) image pixels; NaN is written as ``0, 0, v=0``.
        scheme: Its landmark names become the category's keypoints.
        image_root: ``file_name`` is written relative to it (default: the JSON's folder) when under it.
        category_name: The one category's name.
        visibility: (R, N) COCO ``v`` of the landmarks (1 = occluded, as a reviewer marked it; 2 =
            visible); None: 2 for every landmark with a position.
    """
    lms = np.asarray(landmarks, dtype=np.float32)
    check_export(samples, lms, scheme, ["image_uri", "width", "height", "box"])
    if visibility is None:
        vis = np.where(np.isnan(lms[..., 0]), 0, 2)
    else:
        vis = np.asarray(visibility, dtype=np.int64)
        if vis.shape != lms.shape[:2]:
            raise ValueError(f"visibility must have shape (R, N) = {lms.shape[:2]}, got {vis.shape}")
    p = Path(path)
    root = image_root if image_root is not None else p.parent
    images: dict[str, dict[str, Any]] = {}
    annotations: list[dict[str, Any]] = []
    for row, pts, v_row in zip(samples.to_dict("records"), lms, vis, strict=True):
        uri = str(row["image_uri"])
        if uri not in images:
            images[uri] = {
                "id": len(images) + 1,
                "file_name": relative_name(uri, root),
                "width": int(row["width"]),
                "height": int(row["height"]),
            }
        keypoints: list[float | int] = []
        for (x, y), v in zip(pts, v_row, strict=True):
            if np.isnan(x) or np.isnan(y):
                keypoints += [0, 0, 0]
            else:
                keypoints += [float(x), float(y), 1 if int(v) == 1 else 2]
        x0, y0, x1, y1 = (float(v) for v in np.asarray(row["box"], dtype=np.float32))
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": images[uri]["id"],
                "category_id": 1,
                "keypoints": keypoints,
                "num_keypoints": int(np.isfinite(pts).all(axis=1).sum()),
                "bbox": [x0, y0, x1 - x0, y1 - y0],  # exact in float64 for float32 corners
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": 0,
            }
        )
    doc = {
        "info": {"description": f"pipstc export, scheme {scheme.name}"},
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": category_name,
                "supercategory": category_name,
                "keypoints": list(scheme.landmark_names),
                "skeleton": [],
            }
        ],
    }
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p
