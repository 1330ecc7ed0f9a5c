"""Unlabeled pools: a folder of images becomes pool samples, one per face.

Every image of any common type (see :mod:`pipnet_core.images`: JPEG, PNG, BMP, TIFF, WebP;
grayscale, 16-bit, RGBA, EXIF-rotated) is decoded, its faces are found by the embedded detector
(:mod:`annotations.ingest.detect`) or read from a box file, and each face becomes a sample with its box,
``box_source`` (``detector:<name>`` or ``given``) and detector score. Images without a face,
corrupt files and files that are not images are rejects with the reason; nothing is silently
skipped except hidden files and label sidecars (``.pts`` beside 300W images).

Sample ids are content hashes of the image bytes and the box (:mod:`annotations.store.ids`), so building
the same folder twice gives the same ids and the store adds nothing the second time.

Box files: CSV with the header ``image,x0,y0,x1,y1[,score]``, or JSON, a list of
``{"image": ..., "box": [x0, y0, x1, y1], "score": ...}``; ``image`` is relative to the pool folder
unless absolute; an image may appear on several rows (several faces).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotations.formats.common import FormatError, ImageInfo, ImportBuilder, ImportResult, RowError, parse_float
from annotations.ingest.detect import Detection, create_detector
from pipnet_core.images import ImageReadError, decode_image, is_image_path
from pipnet_core.schemes import Scheme

__all__ = ["BoxEntry", "build_pool", "list_pool_files", "read_boxes_file"]

# Label files that sit beside images in labeled folders (300W): not pool content, not an error.
SIDECAR_SUFFIXES = (".pts",)


@dataclass(frozen=True)
class BoxEntry:
    """One face of a box file: (4,) box in pixels, optional score, and where it was written."""

    box: tuple[float, float, float, float]
    score: float | None
    location: str


def list_pool_files(
    folder: str | Path, recursive: bool = True, ignore_suffixes: Sequence[str] = SIDECAR_SUFFIXES
) -> list[Path]:
    """All candidate files of a pool folder, sorted: hidden files and label sidecars left out."""
    root = Path(folder)
    if not root.is_dir():
        raise FormatError(f"{root}: not a folder — give the folder that holds the pool images")
    ignore = {s.lower() for s in ignore_suffixes}
    files = root.rglob("*") if recursive else root.iterdir()
    out = []
    for p in files:
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file() or p.suffix.lower() in ignore:
            continue
        out.append(p)
    return sorted(out)


def _key(name: str, root: Path) -> str:
    p = Path(name)
    return str((p if p.is_absolute() else root / p).resolve())


def read_boxes_file(path: str | Path, root: str | Path) -> tuple[dict[str, list[BoxEntry]], list[tuple[str, str]]]:
    """Read a box file.

    Args:
        path: ``.csv`` or ``.json`` (see the module docstring).
        root: Folder that relative image names are relative to.

    Returns:
        Faces by resolved image path, and (location, reason) of rows that could not be read.

    Raises:
        FormatError: unreadable file, not JSON, or a CSV without the ``image,x0,y0,x1,y1`` header.
    """
    p, base = Path(path), Path(root)
    boxes: dict[str, list[BoxEntry]] = {}
    bad: list[tuple[str, str]] = []
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise FormatError(f"{p}: cannot read the box file ({e.strerror or e}) — check the --boxes path") from None
    rows: list[tuple[str, dict[str, Any]]] = []
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(
                f"{p}: not valid JSON (line {e.lineno}: {e.msg}) — a box file is a list of {{image, box, score}}"
            ) from None
        if not isinstance(data, list):
            raise FormatError(
                f"{p}: not a list — a JSON box file is a list of "
                '{"image": ..., "box": [x0, y0, x1, y1], "score": ...}'
            )
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                bad.append((f"item {i}", "not an object with image and box"))
                continue
            box = item.get("box")
            fields = {"image": item.get("image"), "score": item.get("score")}
            if isinstance(box, list) and len(box) == 4:
                fields |= dict(zip(("x0", "y0", "x1", "y1"), box, strict=True))
            else:
                bad.append((f"item {i}", f"field box: expected [x0, y0, x1, y1], got {box!r}"))
                continue
            rows.append((f"item {i}", fields))
    else:
        reader = csv.DictReader(text.splitlines())
        header = [h.strip() for h in reader.fieldnames or []]
        if header[:5] != ["image", "x0", "y0", "x1", "y1"]:
            raise FormatError(
                f"{p}: wrong header {header[:6]} — a CSV box file starts with image,x0,y0,x1,y1 (then score)"
            )
        for i, row in enumerate(reader):
            rows.append((f"line {i + 2}", {k.strip(): v for k, v in row.items() if k is not None}))
    for where, fields in rows:
        try:
            name = fields.get("image")
            if not isinstance(name, str) or not name.strip():
                raise RowError("field image is empty")
            box = tuple(parse_float(fields.get(k), f"field {k}") for k in ("x0", "y0", "x1", "y1"))
            score_raw = fields.get("score")
            score = None if score_raw in (None, "") else parse_float(score_raw, "field score")
        except RowError as e:
            bad.append((where, str(e)))
            continue
        boxes.setdefault(_key(name.strip(), base), []).append(BoxEntry(box, score, where))  # type: ignore[arg-type]
    return boxes, bad


def _read_pool_image(path: Path, builder: ImportBuilder) -> tuple[ImageInfo, Any] | None:
    """The image's info and pixels, or None after recording why it cannot be used."""
    src = str(path)
    try:
        image = decode_image(path.read_bytes(), source=src)
    except OSError as e:
        builder.reject("file", f"cannot read the file ({e.strerror or e})", source=src)
        return None
    except ImageReadError as e:
        reason = str(e).removeprefix(f"{src}: ")
        if not is_image_path(path):
            reason = f"not an image file (suffix {path.suffix or 'none'!r}): {reason}"
        builder.reject("file", reason, source=src)
        return None
    return ImageInfo(str(path.resolve()), image.width, image.height, image.digest), image


def _add_given(
    builder: ImportBuilder, info: ImageInfo, entries: list[BoxEntry] | None, boxes_file: str | Path | None
) -> None:
    """The faces a box file gives for one image (a reject when it gives none)."""
    if not entries:
        builder.reject("file", f"no face box for this image in {boxes_file}", source=info.path)
        return
    for entry in entries:
        builder.add_sample(entry.location, info, entry.box, box_source="given", detector_score=entry.score,
                           source=str(boxes_file))  # fmt: skip


def _reject_unmatched_boxes(
    builder: ImportBuilder, given: dict[str, list[BoxEntry]], seen: set[str], boxes_file: Any, shard: bool
) -> None:
    """Box-file rows whose image is not among the pool's files."""
    for key, entries in given.items():
        # A shard (files given) sees only its own images: there, only a file that does not exist is missing.
        if (key not in seen) if not shard else not Path(key).is_file():
            for entry in entries:
                builder.reject(entry.location, f"missing image: {key} is not among the pool's files",
                               source=str(boxes_file))  # fmt: skip


def build_pool(
    folder: str | Path,
    detector: str | None = "yuface",
    boxes_file: str | Path | None = None,
    dataset: str | None = None,
    recursive: bool = True,
    min_score: float = 0.5,
    max_side: int = 960,
    files: Sequence[str | Path] | None = None,
    scheme: Scheme | None = None,
) -> ImportResult:
    """Turn a folder of images into pool samples (labels empty).

    Args:
        folder: The pool folder (walked recursively by default).
        detector: ``"yuface"``, ``"haar"``, or None (then ``boxes_file`` is required).
        boxes_file: Box file that replaces the detector (CSV or JSON, see the module docstring).
        dataset: Dataset name (default: the folder's name).
        recursive: Walk sub-folders.
        min_score: Detector confidence threshold (yuface).
        max_side: Images are downscaled to this long side before detection.
        files: Only these files (a shard of :func:`list_pool_files`); default all.
        scheme: Only sizes the empty landmarks array ``(0, N, 2)``; pools carry no labels.

    Raises:
        FormatError: the folder holds no file, or it or the box file cannot be used at all.
        annotations.ingest.detect.DetectorUnavailable: the detector cannot run here.
    """
    root = Path(folder)
    candidates = [Path(f) for f in files] if files is not None else list_pool_files(root, recursive)
    if not candidates:
        raise FormatError(
            f"{root}: no files in the folder{' or its sub-folders' if recursive else ''} (hidden files and .pts "
            "sidecars are left out) — give the folder that holds the pool images"
        )
    builder = ImportBuilder(
        source=str(root), scheme=scheme, dataset=dataset or root.resolve().name, stage="pool", round=None
    )
    given: dict[str, list[BoxEntry]] | None = None
    if boxes_file is not None:
        given, bad = read_boxes_file(boxes_file, root)
        for where, reason in bad:
            builder.reject(where, reason, source=str(boxes_file))
        boxes_path = Path(boxes_file).resolve()
        candidates = [c for c in candidates if c.resolve() != boxes_path]
        detect = None
    elif detector is None:
        raise ValueError("build_pool needs a detector ('yuface' or 'haar') or a boxes_file")
    else:
        detect = create_detector(detector, min_score=min_score, max_side=max_side)
    seen_keys: set[str] = set()
    for path in candidates:
        seen_keys.add(str(path.resolve()))
        read = _read_pool_image(path, builder)
        if read is None:
            continue
        info, image = read
        if given is not None:
            _add_given(builder, info, given.get(info.path), boxes_file)
            continue
        assert detect is not None
        faces: list[Detection] = detect(image.rgb)
        if not faces:
            builder.reject("file", f"no face found by {detector} (min score {min_score})", source=str(path))
            continue
        for k, face in enumerate(faces):
            # The raw box, even where it pokes out of the image: the box mapping is fitted on raw boxes too.
            builder.add_sample(f"face {k}", info, face.box, box_source=f"detector:{detector}",
                               detector_score=face.score, source=str(path))  # fmt: skip
    if given is not None:
        _reject_unmatched_boxes(builder, given, seen_keys, boxes_file, shard=files is not None)
    return builder.result()
