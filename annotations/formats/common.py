"""What every importer returns, and the checks every importer shares.

An importer reads a file (or a folder) of one dataset format and returns an :class:`ImportResult`:
the samples (faces), the human labels with their landmarks, and the rejects — every input it could
not use, with the file, the line or field, and the reason. One bad row never costs the good ones
(docs/architecture.md section 8); only a problem with the whole file (not JSON, a wrong header) raises
:class:`FormatError`, whose message names the file and the fix.

The checks (:class:`ImportBuilder`): landmark count of the scheme, numeric values, NaN (where the
format has no notion of a missing landmark), a missing or unreadable image, a duplicate sample (the
same image bytes and box twice, see :mod:`annotations.store.ids`), landmarks far outside the image (more
than 50% of the image size beyond an edge, which points at swapped x/y or the wrong image), a face box
that does not overlap its image.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from annotations.store.ids import sample_id_from_digest
from annotations.store.schema import rejects_schema, samples_schema
from pipnet_core.crop import landmark_box as crop_landmark_box
from pipnet_core.images import ImageReadError, read_image
from pipnet_core.schemes import Scheme

__all__ = [
    "FAR_OUTSIDE_FRACTION",
    "LABEL_COLUMNS",
    "REJECT_COLUMNS",
    "SAMPLE_COLUMNS",
    "FormatError",
    "ImageInfo",
    "ImportBuilder",
    "ImportResult",
    "RowError",
    "check_export",
    "concat_results",
    "empty_result",
    "format_float",
    "landmark_box",
    "landmark_boxes",
    "parse_float",
    "relative_name",
    "resolve_image",
]

SAMPLE_COLUMNS: tuple[str, ...] = tuple(samples_schema().names)
REJECT_COLUMNS: tuple[str, ...] = tuple(rejects_schema().names)
# The store adds label_id and the model-only columns; an import knows these.
LABEL_COLUMNS: tuple[str, ...] = (
    "sample_id",
    "source",
    "round",
    "annotator",
    "ls_task_id",
    "ls_annotation_id",
    "created_at",
)

# A landmark more than this fraction of the image size beyond an edge is a data error, not a face
# partly out of frame (300W and WFLW faces reach a few percent past the border at most).
FAR_OUTSIDE_FRACTION = 0.5


class FormatError(ValueError):
    """The whole file cannot be read in this format; the message names the file and the fix."""


class RowError(ValueError):
    """One row (line, annotation, file) is unusable; importers turn it into a reject."""


@dataclass
class ImportResult:
    """What an importer found.

    Attributes:
        samples: One row per face, the columns of :func:`annotations.store.schema.samples_schema`
            (``split`` is None unless the file gave one: the store assigns it).
        labels: One row per label: :data:`LABEL_COLUMNS`.
        landmarks: (R, N, 2) float32 image pixels aligned with ``labels`` rows; NaN = missing.
        rejects: The columns of :func:`annotations.store.schema.rejects_schema`.
        extras: Optional per-sample fields a format carries beyond the store's columns (WFLW
            attributes, COCO visibility...), keyed by ``sample_id``; None when there are none.
    """

    samples: pd.DataFrame
    labels: pd.DataFrame
    landmarks: np.ndarray
    rejects: pd.DataFrame
    extras: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        assert len(self.labels) == len(self.landmarks), "labels and landmarks must align"

    def summary(self) -> str:
        """One line for logs: counts of samples, labels and rejects."""
        return f"{len(self.samples)} samples, {len(self.labels)} labels, {len(self.rejects)} rejects"


def empty_samples() -> pd.DataFrame:
    return _samples_frame([])


def empty_labels() -> pd.DataFrame:
    return _labels_frame([])


def empty_rejects() -> pd.DataFrame:
    return _rejects_frame([])


def empty_result(num_landmarks: int) -> ImportResult:
    """An import that found nothing."""
    return ImportResult(empty_samples(), empty_labels(), np.zeros((0, num_landmarks, 2), np.float32), empty_rejects())


def _none_for_nan(df: pd.DataFrame, columns: Sequence[str]) -> None:
    """Nullable text columns hold None (never NaN), as the store's Arrow schema expects."""
    for c in columns:
        df[c] = df[c].astype(object).where(df[c].notna(), None)


def _samples_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(SAMPLE_COLUMNS))
    _none_for_nan(df, ["box_source", "split", "image_digest"])
    df["width"] = df["width"].astype("int32")
    df["height"] = df["height"].astype("int32")
    df["detector_score"] = df["detector_score"].astype("float32")
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


def _labels_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(LABEL_COLUMNS))
    _none_for_nan(df, ["annotator"])
    df["round"] = df["round"].astype("int32")
    df["ls_task_id"] = df["ls_task_id"].astype("Int64")
    df["ls_annotation_id"] = df["ls_annotation_id"].astype("Int64")
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


def _rejects_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(REJECT_COLUMNS))
    _none_for_nan(df, ["location", "sample_id"])
    df["round"] = df["round"].astype("Int32")
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    return df


def concat_results(results: Iterable[ImportResult], num_landmarks: int) -> ImportResult:
    """Several imports as one (for example one per shard). Duplicates are left to the store."""
    results = list(results)
    if not results:
        return empty_result(num_landmarks)
    extras = [r.extras for r in results if r.extras is not None]
    return ImportResult(
        samples=pd.concat([r.samples for r in results], ignore_index=True),
        labels=pd.concat([r.labels for r in results], ignore_index=True),
        landmarks=np.concatenate([r.landmarks for r in results], axis=0).astype(np.float32, copy=False),
        rejects=pd.concat([r.rejects for r in results], ignore_index=True),
        extras=pd.concat(extras, ignore_index=True) if extras else None,
    )


def format_float(value: float) -> str:
    """Text that reads back to the same float32 (and float64): Python's shortest round-trip repr."""
    v = float(value)
    if np.isnan(v):
        return "nan"
    return repr(v)


def parse_float(token: str, what: str) -> float:
    """Parse one number; a non-numeric token raises :class:`RowError` naming ``what``."""
    try:
        return float(token)
    except (TypeError, ValueError):
        raise RowError(f"{what}: {token!r} is not a number") from None


def check_export(samples: pd.DataFrame, landmarks: np.ndarray, scheme: Scheme, columns: Sequence[str]) -> None:
    """Writers' argument check: (R, N, 2) landmarks of the scheme, aligned with ``samples`` holding ``columns``."""
    lms = np.asarray(landmarks)
    if lms.ndim != 3 or lms.shape[1:] != (scheme.num_landmarks, 2):
        raise ValueError(
            f"landmarks must be (R, {scheme.num_landmarks}, 2) for scheme {scheme.name!r}, got {lms.shape}"
        )
    if len(samples) != len(lms):
        raise ValueError(f"{len(samples)} sample rows but {len(lms)} landmark rows; they must align")
    missing = [c for c in columns if c not in samples.columns]
    if missing:
        raise ValueError(f"samples lack the column(s) {missing} that the export needs")


def relative_name(uri: str, root: str | Path | None) -> str:
    """``uri`` relative to ``root`` (POSIX separators) when it lies under it, else unchanged."""
    if root is None or "://" in uri:
        return uri
    try:
        return Path(uri).resolve().relative_to(Path(root).resolve()).as_posix()
    except (ValueError, OSError):
        return uri


def resolve_image(name: str, root: str | Path) -> Path:
    """An image name from a label file as a path: absolute names as they are, others under ``root``."""
    p = Path(name)
    return p if p.is_absolute() else Path(root) / p


def landmark_box(landmarks: np.ndarray) -> np.ndarray | None:
    """Tight box (x0, y0, x1, y1) over the finite landmarks of (N, 2), or None if fewer than 2."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 2:
        return None
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return np.array([lo[0], lo[1], hi[0], hi[1]], dtype=np.float32)


def landmark_boxes(landmarks: np.ndarray) -> np.ndarray:
    """Tight boxes of (M, N, 2) landmarks -> (M, 4) float32 (NaN rows where not computable)."""
    return crop_landmark_box(np.asarray(landmarks, dtype=np.float64)).astype(np.float32)


@dataclass
class ImageInfo:
    """What an import keeps of an image: absolute path, upright size, digest of the file bytes."""

    path: str
    width: int
    height: int
    digest: str


@dataclass
class ImportBuilder:
    """Collects samples, labels and rejects while an importer walks its input.

    Args:
        source: The file (or folder) read; the default ``source`` of rejects.
        scheme: Landmark layout every label must have (None for pools, which have no labels).
        dataset: Dataset name written on every sample.
        stage: Rejects' stage (``import`` for labeled formats, ``pool`` for pools).
        label_source: ``source`` of every label row (``human`` for imports).
        round: Round of the labels (0: before any training) and of the rejects.
        allow_missing: Whether NaN landmarks are kept as "missing" (formats with a visibility or a
            per-point presence) or rejected (formats that always list every landmark).
    """

    source: str
    scheme: Scheme | None
    dataset: str
    stage: str = "import"
    label_source: str = "human"
    round: int | None = 0
    allow_missing: bool = False
    created_at: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.now(tz="UTC"))
    _samples: list[dict[str, Any]] = field(default_factory=list)
    _labels: list[dict[str, Any]] = field(default_factory=list)
    _landmarks: list[np.ndarray] = field(default_factory=list)
    _rejects: list[dict[str, Any]] = field(default_factory=list)
    _extras: list[dict[str, Any]] = field(default_factory=list)
    _seen: dict[str, str] = field(default_factory=dict)
    _images: dict[str, ImageInfo | ImageReadError] = field(default_factory=dict)

    # -- rejects ----------------------------------------------------------------------------------

    def reject(
        self, location: str | None, reason: str, sample_id: str | None = None, source: str | None = None
    ) -> None:
        """Record an input that cannot be used."""
        self._rejects.append(
            {
                "stage": self.stage,
                "source": source or self.source,
                "location": location,
                "sample_id": sample_id,
                "round": self.round,
                "reason": reason,
                "created_at": self.created_at,
            }
        )

    # -- images -----------------------------------------------------------------------------------

    def image_info(self, path: str | Path) -> ImageInfo:
        """Size and digest of an image, read once per import. Raises :class:`ImageReadError`."""
        key = str(Path(path).resolve())
        cached = self._images.get(key)
        if cached is None:
            try:
                img = read_image(key)
                cached = ImageInfo(key, img.width, img.height, img.digest)
            except ImageReadError as e:
                cached = e
            self._images[key] = cached
        if isinstance(cached, ImageReadError):
            raise cached
        return cached

    # -- checks -----------------------------------------------------------------------------------

    def check_landmarks(self, landmarks: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
        """Validate (N, 2) landmarks; return them as float32. Raises :class:`RowError`."""
        assert self.scheme is not None, "labeled imports need a scheme"
        n = self.scheme.num_landmarks
        pts = np.asarray(landmarks, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise RowError(f"landmarks must be (N, 2), got shape {pts.shape}")
        if pts.shape[0] != n:
            raise RowError(
                f"{pts.shape[0]} landmarks, but scheme {self.scheme.name!r} has {n}; "
                "import with the scheme the data was labeled in"
            )
        if np.isinf(pts).any():
            i = int(np.argwhere(np.isinf(pts))[0, 0])
            raise RowError(f"landmark {i} ({self.scheme.landmark_names[i]}) is infinite")
        missing = np.isnan(pts).any(axis=1)
        if missing.all():
            raise RowError("every landmark is missing (NaN)")
        if missing.any() and not self.allow_missing:
            idx = np.flatnonzero(missing)
            names = ", ".join(f"{i} ({self.scheme.landmark_names[i]})" for i in idx[:5])
            more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
            raise RowError(
                f"landmark {names}{more} is NaN; this format lists every landmark, "
                "so give the value (or import with allow_missing=True to keep it as missing)"
            )
        if width is not None and height is not None:
            fx, fy = FAR_OUTSIDE_FRACTION * width, FAR_OUTSIDE_FRACTION * height
            with np.errstate(invalid="ignore"):
                far = (pts[:, 0] < -fx) | (pts[:, 0] > width + fx) | (pts[:, 1] < -fy) | (pts[:, 1] > height + fy)
            if far.any():
                i = int(np.flatnonzero(far)[0])
                raise RowError(
                    f"landmark {i} ({self.scheme.landmark_names[i]}) at ({pts[i, 0]:.1f}, {pts[i, 1]:.1f}) is far "
                    f"outside the {width}x{height} image (more than {FAR_OUTSIDE_FRACTION:.0%} of its size beyond an "
                    f"edge; {int(far.sum())} such landmarks); check the x/y order and that the label is for this image"
                )
        return pts.astype(np.float32)

    @staticmethod
    def check_box(box: Sequence[float], width: int | None = None, height: int | None = None) -> np.ndarray:
        """Validate a (x0, y0, x1, y1) pixel box, and that it overlaps the ``width`` x ``height`` image when given.

        A box may poke out of the image (a face cut by the frame, a detector's raw box), but one that
        misses the image entirely labels nothing in it: the wrong image, a box for the full-size photo
        given with a thumbnail, or x/y swapped. Returns the box as float32; raises :class:`RowError`.
        """
        try:
            b = np.asarray(box, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise RowError(f"box {box!r} is not 4 numbers (x0, y0, x1, y1)") from None
        if b.shape != (4,):
            raise RowError(f"a box is 4 numbers (x0, y0, x1, y1), got {len(b)}")
        if not np.isfinite(b).all():
            raise RowError(f"box {b.tolist()} has a NaN or infinite value")
        if b[2] <= b[0] or b[3] <= b[1]:
            raise RowError(f"box {b.tolist()} is empty: need x1 > x0 and y1 > y0 (x0, y0, x1, y1 order)")
        if width is not None and height is not None and (b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0):
            raise RowError(
                f"box {[round(v, 2) for v in b.tolist()]} lies outside the {width}x{height} image (no overlap); "
                "check that the box is for this image, in its pixels, in x0, y0, x1, y1 order"
            )
        return b.astype(np.float32)

    # -- adding -----------------------------------------------------------------------------------

    def add(
        self,
        location: str,
        image: str | Path,
        landmarks: np.ndarray,
        *,
        box: Sequence[float] | None = None,
        box_source: str = "given",
        image_uri: str | None = None,
        sample_id: str | None = None,
        width: int | None = None,
        height: int | None = None,
        annotator: str | None = None,
        ls_task_id: int | None = None,
        ls_annotation_id: int | None = None,
        split: str | None = None,
        dataset: str | None = None,
        repeat_ok: bool = False,
        extras: dict[str, Any] | None = None,
        source: str | None = None,
    ) -> str | None:
        """Check one labeled face and keep it, or record why not.

        Args:
            location: Where in ``source`` (``"line 12"``, ``"annotation 7"``).
            image: Local path of the image file.
            landmarks: (N, 2) image pixels (NaN = missing).
            box: Face box, or None for the tight box of the landmarks (``box_source="landmarks"``).
            image_uri: URI written on the sample (default: the absolute image path).
            sample_id: A known sample id (our own Label Studio tasks carry it); then an image that
                cannot be read locally is not an error, ``width``/``height`` must be given.
            width, height: Known size (Label Studio's ``original_width``); checked against the file.
            split: A split the file gives (None: the store assigns one).
            dataset: This row's dataset when the file names one (default: the builder's).
            repeat_ok: Another label for a sample already seen in this import (a second annotator)
                is kept instead of being rejected as a duplicate.
            extras: Format-specific per-sample fields, see :attr:`ImportResult.extras`.
            source: The file this row came from when it differs from the builder's ``source``.

        Returns:
            The sample id, or None when rejected.
        """
        src = source or self.source
        try:
            info, w, h = self._image_of(image, sample_id, width, height)
            pts = self.check_landmarks(landmarks, w, h)
            b, box_source = self._face_box(pts, box, box_source, w, h)
            sid = sample_id if sample_id is not None else sample_id_from_digest(info.digest, b)  # type: ignore[union-attr]
        except RowError as e:
            self.reject(location, str(e), sample_id=sample_id, source=src)
            return None
        first = self._seen.get(sid)
        if first is not None and not repeat_ok:
            self.reject(
                location,
                f"duplicate sample: the same image and face box as {first} (sample {sid}); remove one of them",
                sample_id=sid,
                source=src,
            )
            return None
        if first is None:
            self._seen[sid] = f"{src} {location}"
            uri = image_uri or (info.path if info is not None else str(image))
            self._keep_sample(sid, uri, w, h, b, box_source, split=split, dataset=dataset, extras=extras,
                              digest=info.digest if info is not None else None)  # fmt: skip
        self._labels.append(
            {
                "sample_id": sid,
                "source": self.label_source,
                "round": self.round if self.round is not None else 0,
                "annotator": annotator,
                "ls_task_id": ls_task_id,
                "ls_annotation_id": ls_annotation_id,
                "created_at": self.created_at,
            }
        )
        self._landmarks.append(pts)
        return sid

    def _image_of(
        self, image: str | Path, sample_id: str | None, width: int | None, height: int | None
    ) -> tuple[ImageInfo | None, int, int]:
        """The image's info (None for a known sample whose image lives elsewhere) and its size."""
        try:
            info: ImageInfo | None = self.image_info(image)
        except ImageReadError as e:
            if sample_id is None or width is None or height is None:
                raise RowError(str(e)) from None
            info = None  # a known sample whose image lives elsewhere (a Label Studio URL)
        sized = info is not None and width is not None and height is not None
        if sized and (width, height) != (info.width, info.height):  # type: ignore[union-attr]
            raise RowError(
                f"the label is for a {width}x{height} image but {info.path} is {info.width}x{info.height}; "
                "point image_root at the images that were labeled"
            )
        if info is not None:
            return info, info.width, info.height
        return None, int(width), int(height)  # type: ignore[arg-type]

    def _face_box(
        self, landmarks: np.ndarray, box: Sequence[float] | None, box_source: str, width: int, height: int
    ) -> tuple[np.ndarray, str]:
        """The checked face box and its source; the landmarks' tight box when none is given."""
        if box is not None:
            return self.check_box(box, width, height), box_source
        b = landmark_box(landmarks)
        if b is None or b[2] <= b[0] or b[3] <= b[1]:
            raise RowError("the landmarks span no area, so no face box can be made from them")
        return self.check_box(b, width, height), "landmarks"

    def _keep_sample(
        self,
        sid: str,
        uri: str,
        width: int,
        height: int,
        box: np.ndarray,
        box_source: str,
        *,
        split: str | None,
        dataset: str | None,
        extras: dict[str, Any] | None,
        detector_score: float = np.nan,
        digest: str | None = None,
    ) -> None:
        self._samples.append(
            {
                "sample_id": sid,
                "image_uri": uri,
                "image_digest": digest,
                "width": width,
                "height": height,
                "box": box,
                "box_source": box_source,
                "detector_score": detector_score,
                "split": split,
                "dataset": dataset or self.dataset,
                "created_at": self.created_at,
            }
        )
        if extras:
            self._extras.append({"sample_id": sid, **extras})

    def add_sample(
        self,
        location: str,
        info: ImageInfo,
        box: Sequence[float],
        *,
        box_source: str,
        detector_score: float | None = None,
        source: str | None = None,
    ) -> str | None:
        """Keep one unlabeled face (pools). Returns its sample id, or None when rejected."""
        src = source or self.source
        try:
            b = self.check_box(box, info.width, info.height)
        except RowError as e:
            self.reject(location, str(e), source=src)
            return None
        sid = sample_id_from_digest(info.digest, b)
        first = self._seen.get(sid)
        if first is not None:
            self.reject(
                location,
                f"duplicate sample: the same image bytes and face box as {first} (sample {sid})",
                sample_id=sid,
                source=src,
            )
            return None
        self._seen[sid] = f"{src} {location}".strip()
        score = np.nan if detector_score is None else float(detector_score)
        self._keep_sample(sid, info.path, info.width, info.height, b, box_source, split=None, dataset=None, extras=None,
                          detector_score=score, digest=info.digest)  # fmt: skip
        return sid

    def result(self) -> ImportResult:
        """Everything collected so far."""
        n = self.scheme.num_landmarks if self.scheme is not None else 0
        landmarks = np.stack(self._landmarks).astype(np.float32) if self._landmarks else np.zeros((0, n, 2), np.float32)
        return ImportResult(
            samples=_samples_frame(self._samples),
            labels=_labels_frame(self._labels),
            landmarks=landmarks,
            rejects=_rejects_frame(self._rejects),
            extras=pd.DataFrame(self._extras) if self._extras else None,
        )
