"""Label Studio JSON and JSON_MIN exports of pipstc's own review projects.

Our labeling config (docs/review.md section 3.1) has one ``Image`` named
``image`` and one ``KeyPointLabels`` named ``kp`` with one ``Label`` per landmark, named as the
scheme's ``landmark_names`` in order; the landmark index comes from the label, never from the
result order or id (JSON_MIN drops ids). Result values ``x``/``y`` are percentages of
``original_width``/``original_height`` (Label Studio KeyPointLabels docs), so pixels are
``x * original_width / 100``; a value outside [0, 100] (beyond a rounding tolerance) is refused, naming
the row, since it cannot be a point on the image. Shapes (docs/review.md section 7.6):

* JSON: a list of tasks, each with ``data`` (``image``, our ``sample_id``) and ``annotations``
  (``id``, ``completed_by``, ``was_cancelled``, ``result`` items with ``value.{x, y, keypointlabels}``);
* JSON_MIN: one row per annotation, the task data merged in, the ``kp`` key holding flat items
  ``{x, y, keypointlabels, original_width, original_height}``, plus ``annotator``, ``annotation_id``.

A task's ``sample_id`` links the label to the sample already in the store, so an image that cannot
be found locally is no error then. A landmark the annotator removed is missing (NaN). Skipped
(``was_cancelled``) annotations are recorded as rejects, since nothing of them can be used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from annotations.formats.common import FormatError, ImportBuilder, ImportResult, RowError
from pipnet_core.schemes import Scheme, legacy_landmark_names

__all__ = ["PERCENT_TOLERANCE", "items_to_landmarks", "read_labelstudio_export", "resolve_ls_image"]


def resolve_ls_image(uri: str, image_root: str | Path | None, export_dir: Path) -> Path | None:
    """The local file behind a task's ``data.image``, or None when it cannot be local.

    ``/data/local-files/?d=<rel>`` is relative to ``image_root`` (or Label Studio's
    ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``); ``/data/upload/<project>/<uuid8>-<name>`` and
    http(s) URLs are looked up by file name under ``image_root``; inline ``data:`` URLs are not files.
    """
    if uri.startswith("data:"):
        return None
    parsed = urlparse(uri)
    root = Path(image_root) if image_root is not None else None
    if parsed.path.rstrip("/").endswith("/data/local-files") or "/data/local-files" in parsed.path:
        rel = parse_qs(parsed.query).get("d", [""])[0]
        if not rel:
            return None
        base = root or (
            Path(os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"])
            if "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in os.environ
            else None
        )
        return (base / rel) if base is not None else Path(rel)
    if parsed.scheme in ("http", "https", "s3", "gs") or parsed.path.startswith("/data/upload/"):
        if root is None:
            return None
        name = Path(unquote(parsed.path)).name
        candidates = [root / name]
        if parsed.path.startswith("/data/upload/") and "-" in name:
            candidates.append(root / name.split("-", 1)[1])  # uploads are stored as <uuid8>-<original name>
        return next((c for c in candidates if c.is_file()), candidates[-1])
    p = Path(unquote(uri))
    if p.is_absolute():
        return p
    return (root or export_dir) / p


# Label Studio stores x/y as percentages of the image, inside [0, 100] by construction; exports that
# went through float formatting or a spreadsheet may land a hair outside. More than this is a point off
# the image (or pixels written where percentages belong) and would become a wrong landmark.
PERCENT_TOLERANCE = 0.01


def _check_percent(k: int, name: str, axis: str, value: float, side: str) -> None:
    """Refuse an ``x``/``y`` that is not a finite percentage in [0, 100] (within :data:`PERCENT_TOLERANCE`)."""
    if not np.isfinite(value) or not -PERCENT_TOLERANCE <= value <= 100.0 + PERCENT_TOLERANCE:
        raise RowError(
            f"result {k} ({name}): {axis} = {value!r} % is outside 0-100 % of the image {side}; Label Studio gives "
            "percentages, so this point is off the image or its value is in pixels: fix or delete the point in "
            "Label Studio and export again"
        )


def items_to_landmarks(items: list[dict[str, Any]], scheme: Scheme, control: str = "kp") -> tuple[np.ndarray, int, int]:
    """Keypoint result items (full JSON or JSON_MIN shape) -> landmarks in pixels.

    Returns:
        (N, 2) float64 pixels (NaN where no item carries that landmark), original width and height.

    Raises:
        RowError: a label that is not a landmark of the scheme, a landmark given twice, an image
            rotated in the editor, inconsistent or missing image sizes, non-numeric coordinates.
    """
    index = {name: i for i, name in enumerate(legacy_landmark_names(scheme.num_landmarks))}  # older projects
    index.update({name: i for i, name in enumerate(scheme.landmark_names)})
    pts = np.full((scheme.num_landmarks, 2), np.nan)
    size: tuple[int, int] | None = None
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise RowError(f"result {k}: not an object")
        if "value" in item:  # full JSON
            if item.get("from_name", control) != control or item.get("type", "keypointlabels") != "keypointlabels":
                continue  # another control of the same project (a comment box, say): not landmarks
            value = item["value"]
            if not isinstance(value, dict):
                raise RowError(f"result {k}: 'value' is not an object with x, y and keypointlabels")
        else:
            value = item
        labels = value.get("keypointlabels") or []
        if not isinstance(labels, list) or len(labels) != 1:
            raise RowError(f"result {k}: expected exactly one keypoint label, got {labels!r}")
        name = labels[0]
        if not isinstance(name, str) or name not in index:
            raise RowError(
                f"result {k}: label {name!r} is not a landmark of scheme {scheme.name!r} "
                f"(labels are {scheme.landmark_names[0]}..{scheme.landmark_names[-1]}); "
                "was the project made for another scheme?"
            )
        rotation = item.get("image_rotation", value.get("image_rotation", 0)) or 0
        if rotation:
            raise RowError(
                f"result {k}: image_rotation {rotation}; reset the image rotation in Label Studio and resubmit"
            )
        try:
            w = int(item.get("original_width", value.get("original_width")))
            h = int(item.get("original_height", value.get("original_height")))
            x, y = float(value["x"]), float(value["y"])
        except (TypeError, ValueError, KeyError, OverflowError) as e:
            raise RowError(
                f"result {k} ({name}): missing or non-numeric x/y/original_width/original_height ({e})"
            ) from None
        if w <= 0 or h <= 0:
            raise RowError(f"result {k} ({name}): original size {w}x{h} is not an image size; re-export the project")
        _check_percent(k, name, "x", x, "width")
        _check_percent(k, name, "y", y, "height")
        if size is None:
            size = (w, h)
        elif size != (w, h):
            raise RowError(
                f"result {k} ({name}): original size {w}x{h} differs from {size[0]}x{size[1]} of earlier results"
            )
        i = index[name]
        if not np.isnan(pts[i, 0]):
            raise RowError(f"result {k}: landmark {name!r} placed twice; delete one of the two points")
        pts[i] = (x * w / 100.0, y * h / 100.0)
    if size is None:
        raise RowError(f"no keypoints of control {control!r} (an empty or skipped annotation)")
    return pts, size[0], size[1]


def _annotator(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return str(value.get("email") or value.get("username") or value.get("id"))
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _sample_id(task_data: dict[str, Any]) -> str | None:
    """Our tasks carry the sample id as a non-empty string; anything else is no sample id."""
    value = task_data.get("sample_id")
    return value if isinstance(value, str) and value else None


def _load_export(p: Path) -> list[dict[str, Any]]:
    """The export's list of tasks (JSON) or annotation rows (JSON_MIN); FormatError names what is wrong."""
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise FormatError(f"{p}: cannot read the export ({e.strerror or e}) — check the path") from None
    except json.JSONDecodeError as e:
        raise FormatError(
            f"{p}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg}) — export the project as JSON or JSON_MIN"
        ) from None
    if not isinstance(data, list) or any(not isinstance(t, dict) for t in data):
        raise FormatError(
            f"{p}: a Label Studio JSON/JSON_MIN export is a list of objects — export the project as JSON or JSON_MIN"
        )
    full = any("annotations" in t and "data" in t for t in data)
    if not full and data and not any("image" in t for t in data):
        raise FormatError(
            f"{p}: neither a JSON export (tasks with 'data' and 'annotations') "
            "nor a JSON_MIN export (rows with 'image') — "
            "export the project as JSON or JSON_MIN"
        )
    return data


def _add_task(
    builder: ImportBuilder, t: int, task: dict[str, Any], p: Path, image_root: str | Path | None, control: str
) -> None:
    """Every annotation of one task of a full JSON export; skipped ones are recorded, not imported."""
    task_data = task.get("data") if isinstance(task.get("data"), dict) else {}
    task_id = _int(task.get("id"))
    annotations = task.get("annotations") or []
    if not isinstance(annotations, list):
        builder.reject(f"task {task_id if task_id is not None else t}", "'annotations' is not a list; re-export")
        return
    for a, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            builder.reject(f"task {task_id if task_id is not None else t} annotation {a}", "not an object; re-export")
            continue
        where = f"task {task_id if task_id is not None else t} annotation {ann.get('id', a)}"
        if ann.get("was_cancelled"):
            skipped = "skipped in Label Studio (was_cancelled); nothing to import"
            builder.reject(where, skipped, sample_id=_sample_id(task_data))
            continue
        _add(builder, where, task_data, ann.get("result") or [], p, image_root, control,
             annotator=_annotator(ann.get("completed_by")), task_id=task_id,
             annotation_id=_int(ann.get("id")))  # fmt: skip


def read_labelstudio_export(
    path: str | Path,
    scheme: Scheme,
    image_root: str | Path | None = None,
    dataset: str | None = None,
    control: str = "kp",
    allow_missing: bool = True,
) -> ImportResult:
    """Import a Label Studio JSON or JSON_MIN export of a pipstc review project.

    Args:
        path: The exported ``.json``.
        scheme: The scheme the project was generated from.
        image_root: Where the task images live locally (see :func:`resolve_ls_image`).
        dataset: Dataset name of new samples (default: the export's stem).
        control: Name of the KeyPointLabels control (``kp`` in our configs).
        allow_missing: Keep landmarks no one placed as missing (NaN) instead of rejecting the annotation.

    Raises:
        FormatError: not JSON, or not a list of tasks / annotation rows.
    """
    p = Path(path)
    data = _load_export(p)
    builder = ImportBuilder(source=str(p), scheme=scheme, dataset=dataset or p.stem, allow_missing=allow_missing)
    full = any("annotations" in t and "data" in t for t in data)
    for t, task in enumerate(data):
        if full:
            _add_task(builder, t, task, p, image_root, control)
            continue
        task_id = _int(task.get("id"))
        where = f"row {t} (task {task_id}, annotation {task.get('annotation_id')})"
        _add(builder, where, task, task.get(control) or [], p, image_root, control,
             annotator=_annotator(task.get("annotator")), task_id=task_id,
             annotation_id=_int(task.get("annotation_id")))  # fmt: skip
    return builder.result()


def _add(
    builder: ImportBuilder,
    where: str,
    task_data: dict[str, Any],
    items: list[Any],
    export: Path,
    image_root: str | Path | None,
    control: str,
    *,
    annotator: str | None,
    task_id: int | None,
    annotation_id: int | None,
) -> None:
    sample_id = _sample_id(task_data)
    try:
        uri = task_data.get("image")
        if not isinstance(uri, str) or not uri:
            raise RowError("task data has no 'image'")
        landmarks, width, height = items_to_landmarks(items if isinstance(items, list) else [], builder.scheme, control)
        box = task_data.get("box")
        if box is not None and (not isinstance(box, list) or len(box) != 4):
            raise RowError(f"task data box {box!r} is not [x0, y0, x1, y1]")
    except RowError as e:
        builder.reject(where, str(e), sample_id=sample_id)
        return
    local = resolve_ls_image(uri, image_root, export.parent)
    if local is None and sample_id is None:
        builder.reject(
            where, f"missing image: {uri[:80]!r} is not a local file and the task has no sample_id; pass image_root"
        )
        return
    builder.add(
        where,
        local if local is not None else Path(uri[:200]),
        landmarks,
        box=box,
        box_source="given",
        image_uri=None if local is not None and local.is_file() else uri,
        sample_id=sample_id,
        width=width,
        height=height,
        annotator=annotator,
        ls_task_id=task_id,
        ls_annotation_id=annotation_id,
        repeat_ok=True,
    )
