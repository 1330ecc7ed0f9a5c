"""Robust image reading: any common file type -> RGB uint8 in the orientation a viewer shows.

Users bring photos from cameras, scanners and exports, so the reader accepts what the field holds:
JPEG, PNG, BMP, TIFF, WebP (and GIF through Pillow); grayscale, 16-bit and float channels; RGBA
(composited over white); EXIF orientation (applied, as browsers and Label Studio display the image,
so landmark pixels always refer to the upright image). Anything it cannot decode raises
:class:`ImageReadError` naming the file, which importers turn into a reject.

OpenCV decodes the pixels (``IMREAD_UNCHANGED`` keeps depth and alpha but skips EXIF), and the
orientation tag (EXIF 0x0112, TIFF 6.0 / EXIF 2.3 section 4.6.4) is read with Pillow, which
matplotlib already requires.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "DecodedImage",
    "ImageReadError",
    "decode_image",
    "image_digest",
    "is_image_path",
    "read_image",
]

# Lower-case suffixes treated as images when walking folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm")

_EXIF_ORIENTATION = 0x0112
# Pillow's own decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): 179 MP is 537 MB as RGB, and
# a few hundred bytes of PNG header can claim far more. Checked from the header, before decoding.
MAX_IMAGE_PIXELS = 178_956_970


class ImageReadError(ValueError):
    """A file is missing or cannot be decoded as an image; the message names the file and why."""


@dataclass(frozen=True)
class DecodedImage:
    """An image as the pipeline sees it.

    Attributes:
        rgb: (H, W, 3) uint8, RGB, upright (EXIF orientation applied).
        width: W of the upright image in pixels.
        height: H of the upright image in pixels.
        digest: sha256 hex of the file bytes (:func:`image_digest`; part of the sample id).
    """

    rgb: np.ndarray
    width: int
    height: int
    digest: str


def image_digest(image_bytes: bytes) -> str:
    """The sha256 hex digest of an image file's bytes (compute once per image, reuse for every face)."""
    return hashlib.sha256(image_bytes).hexdigest()


def is_image_path(path: str | Path) -> bool:
    """True when the suffix is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _too_large(source: str, size: str) -> str:
    return (
        f"{source}: image too large ({size}more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels); "
        "downscale it (a face needs a few hundred pixels)"
    )


def _orientation(data: bytes, source: str) -> int:
    """The EXIF orientation (1 = upright as stored), read from the header before anything is decoded.

    Raises:
        ImageReadError: the header gives more than :data:`MAX_IMAGE_PIXELS` pixels.
    """
    from PIL import Image

    # The size limit is ours (below, with the file named); Pillow's warning for 89-179 MP would only add noise.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Image.DecompressionBombError:
        raise ImageReadError(_too_large(source, "")) from None  # Pillow refused the size itself
    except Exception:  # noqa: BLE001 - no EXIF (or a format Pillow cannot open): upright as stored
        return 1
    if w * h > MAX_IMAGE_PIXELS:
        raise ImageReadError(_too_large(source, f"{w}x{h} px, "))
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels upright. Values 1..8 as in EXIF 2.3 (0th row/column meaning)."""
    if orientation == 2:
        return img[:, ::-1]
    if orientation == 3:
        return img[::-1, ::-1]
    if orientation == 4:
        return img[::-1, :]
    if orientation == 5:
        return np.swapaxes(img, 0, 1)
    if orientation == 6:
        return np.rot90(img, k=-1)  # stored rotated 90 degrees counter-clockwise: turn it clockwise
    if orientation == 7:
        return np.swapaxes(img, 0, 1)[::-1, ::-1]  # transverse: mirror across the anti-diagonal
    if orientation == 8:
        return np.rot90(img, k=1)
    return img


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)  # top byte: 65535 -> 255, a plain 16-bit to 8-bit rescale
    if img.dtype in (np.float32, np.float64):
        finite = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        peak = float(finite.max()) if finite.size else 1.0
        scale = 255.0 if peak <= 1.0 else 255.0 / peak  # float images are usually 0..1 (HDR ones: rescale)
        return np.clip(finite * scale + 0.5, 0, 255).astype(np.uint8)
    if img.dtype == np.int8 or img.dtype == np.int16 or img.dtype == np.int32:
        lo, hi = float(img.min()), float(img.max())
        span = hi - lo if hi > lo else 1.0
        return ((img.astype(np.float32) - lo) * (255.0 / span) + 0.5).astype(np.uint8)
    raise ValueError(f"unsupported pixel type {img.dtype}")


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """OpenCV channel layouts (gray, BGR, BGRA) -> RGB; alpha is composited over white."""
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    channels = img.shape[2]
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 2:  # gray + alpha
        gray, alpha = img[:, :, :1].astype(np.float32), img[:, :, 1:2].astype(np.float32) / 255.0
        out = gray * alpha + 255.0 * (1.0 - alpha)
        return np.repeat((out + 0.5).astype(np.uint8), 3, axis=2)
    if channels == 4:
        bgr, alpha = img[:, :, :3].astype(np.float32), img[:, :, 3:4].astype(np.float32) / 255.0
        out = (bgr * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
        return out[:, :, ::-1]
    return img[:, :, 2::-1]


def _decode_with_pillow(data: bytes) -> np.ndarray | None:
    """Fallback for files OpenCV cannot decode (GIF, unusual TIFF variants). Returns RGB or None."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            return np.asarray(im.convert("RGB"))
    except Exception:  # noqa: BLE001 - any decoder failure means "not an image we can read"
        return None


def decode_image(data: bytes, source: str = "<bytes>") -> DecodedImage:
    """Decode image file bytes.

    Args:
        data: The whole file.
        source: Name used in error messages (the path).

    Returns:
        The upright RGB image with its size and the digest of ``data``.

    Raises:
        ImageReadError: empty, undecodable or too large (:data:`MAX_IMAGE_PIXELS`) bytes.
    """
    if not data:
        raise ImageReadError(f"{source}: empty file, not an image")
    orientation = _orientation(data, source)
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV asserts on headers it refuses (over its own 1 GP limit, say): Pillow may still read it
        raw = None
    if raw is not None and raw.size > 0:
        try:
            rgb = _to_rgb(_to_uint8(raw))
        except ValueError as e:
            raise ImageReadError(f"{source}: {e}; convert the image to 8-bit RGB") from None
        rgb = _apply_orientation(rgb, orientation)
    else:
        rgb = _decode_with_pillow(data)
        if rgb is None:
            raise ImageReadError(
                f"{source}: cannot decode as an image (corrupt, truncated, or not an image file); "
                "re-export it as JPEG or PNG"
            )
    rgb = np.ascontiguousarray(rgb)
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise ImageReadError(f"{source}: image has zero size ({w}x{h})")
    return DecodedImage(rgb=rgb, width=int(w), height=int(h), digest=image_digest(data))


def read_image(path: str | Path) -> DecodedImage:
    """Read and decode an image file (see :func:`decode_image`).

    Raises:
        ImageReadError: missing, unreadable or undecodable file.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{p}: image file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{p}: is a folder, not an image file") from None
    except OSError as e:
        raise ImageReadError(f"{p}: cannot read the file ({e.strerror or e})") from None
    return decode_image(data, source=str(p))
