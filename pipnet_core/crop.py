"""Face crops: from a face box to the square model input, and landmarks between image and crop.

NumPy and OpenCV only, so that ``annotations/`` can import it without torch.

Conventions (used everywhere in pipstc):

* **Pixel coordinates are continuous.** An image of width W spans ``[0, W]``; pixel column ``i``
  covers ``[i, i + 1)`` and its centre is at ``i + 0.5``. Label Studio's percentages map to this
  exactly (``x = pct / 100 * W``). Formats that give integer pixel-centre indices (0-based) need
  ``+ 0.5`` on import, or accept a half-pixel bias.
* **Boxes** are ``(x0, y0, x1, y1)`` in those coordinates (not x, y, w, h).
* **Normalised crop coordinates** ``u = (x - x0) / (x1 - x0)``, ``v`` likewise: the crop box is
  ``[0, 1]^2``. A crop resized to ``size`` pixels shows normalised ``u`` at continuous crop pixel
  ``u * size`` (pixel index ``u * size - 0.5``). Mirroring the crop is then exactly ``u -> 1 - u`` and
  a rotation about the crop centre is a rotation about (0.5, 0.5), as docs/algorithm.md section 2.9 writes
  them.

The official PIPNet crops (docs/algorithm.md section 3) enlarge a box about its centre (x1.1 for 300W,
x1.2 WFLW, x1.3 for the GSSL sets) and, for in-the-wild detector boxes (demo, CelebA), move the crop
down to cut some forehead (issue #52: intended). :func:`enlarge_box` expresses all of them with a
per-axis scale and a downward shift of the centre; e.g. the demo crop is ``scale=(1.2, 1.0),
shift_y=0.1`` and the CelebA crop ``scale=(1.2, 0.95), shift_y=0.125``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["crop_image", "crop_matrix", "enlarge_box", "from_crop", "landmark_box", "to_crop"]


def _boxes(box: np.ndarray, name: str = "box") -> np.ndarray:
    b = np.asarray(box, dtype=np.float64)
    if b.shape[-1:] != (4,) or b.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (4,) or (B, 4) as (x0, y0, x1, y1), got {b.shape}")
    return b


def enlarge_box(box: np.ndarray, scale: float | tuple[float, float] = 1.3, shift_y: float = 0.0) -> np.ndarray:
    """Enlarge a box about its centre, then move it down.

    Args:
        box: (4,) or (B, 4) boxes ``(x0, y0, x1, y1)``, pixels.
        scale: Factor on the width and height (one number), or ``(scale_x, scale_y)``. The box keeps
            its aspect ratio (it is not made square): the crop resize absorbs it, as in the official
            pipeline (NME is then taken in the anisotropic crop, docs/algorithm.md section 2.12).
        shift_y: Downward move of the centre as a fraction of the **original** box height.

    Returns:
        Boxes of the same shape, float64.
    """
    b = _boxes(box)
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    cx = (b[..., 0] + b[..., 2]) / 2
    cy = (b[..., 1] + b[..., 3]) / 2 + shift_y * h
    hw, hh = w * sx / 2, h * sy / 2
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=-1)


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """Tight box of the present landmarks.

    Args:
        landmarks: (N, 2) or (B, N, 2) pixels; NaN landmarks are ignored.

    Returns:
        (4,) or (B, 4) float64 ``(x0, y0, x1, y1)``; all NaN for a face with no landmark.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim not in (2, 3) or lm.shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (N, 2) or (B, N, 2), got {lm.shape}")
    present = np.isfinite(lm).all(axis=-1, keepdims=True)
    lo = np.where(present, lm, np.inf).min(axis=-2)
    hi = np.where(present, lm, -np.inf).max(axis=-2)
    out = np.concatenate([lo, hi], axis=-1)
    return np.where(np.isfinite(out), out, np.nan)


def _check_pairs(lm: np.ndarray, b: np.ndarray) -> None:
    if lm.shape[-1] != 2 or lm.ndim != b.ndim + 1 or (b.ndim == 2 and lm.shape[0] != b.shape[0]):
        raise ValueError(f"landmarks {lm.shape} and boxes {b.shape} must be (N, 2) with (4,) or (B, N, 2) with (B, 4)")


def to_crop(landmarks_px: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
    """Image pixels -> normalised crop coordinates (the crop box becomes [0, 1]^2).

    Args:
        landmarks_px: (N, 2) with a (4,) box, or (B, N, 2) with (B, 4) boxes.
        crop_box: The crop boxes, pixels.

    Returns:
        float64 array of the landmarks' shape; NaN stays NaN.
    """
    lm = np.asarray(landmarks_px, dtype=np.float64)
    b = _boxes(crop_box, "crop_box")
    _check_pairs(lm, b)
    origin = b[..., None, :2]
    extent = b[..., None, 2:] - origin
    return (lm - origin) / extent


def from_crop(landmarks_norm: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
    """Normalised crop coordinates -> image pixels; the exact inverse of :func:`to_crop`."""
    lm = np.asarray(landmarks_norm, dtype=np.float64)
    b = _boxes(crop_box, "crop_box")
    _check_pairs(lm, b)
    origin = b[..., None, :2]
    extent = b[..., None, 2:] - origin
    return lm * extent + origin


def crop_matrix(crop_box: np.ndarray, size: int) -> np.ndarray:
    """Affine map from image pixels to crop pixels, continuous coordinates.

    ``(x0, y0)`` goes to ``(0, 0)`` and ``(x1, y1)`` to ``(size, size)``.

    Args:
        crop_box: (4,) or (B, 4).
        size: Side of the square crop in pixels.

    Returns:
        (2, 3) or (B, 2, 3) float64. For ``cv2.warpAffine``, which addresses pixel centres by integer
        index, shift by half a pixel on both sides (``crop_image`` does).
    """
    b = _boxes(crop_box, "crop_box")
    sx = size / (b[..., 2] - b[..., 0])
    sy = size / (b[..., 3] - b[..., 1])
    zero = np.zeros_like(sx)
    return np.stack(
        [np.stack([sx, zero, -b[..., 0] * sx], axis=-1), np.stack([zero, sy, -b[..., 1] * sy], axis=-1)], axis=-2
    )


def _index_matrix(m: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine -> the same map between integer pixel-centre indices."""
    out = m.copy()
    # idx_out = M (idx_in + 0.5) - 0.5
    out[:, 2] = m[:, 2] + 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {img.dtype}")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return np.ascontiguousarray(img[..., :3])  # alpha dropped
    raise ValueError(f"image must be H x W, H x W x 1, 3 or 4, got {img.shape}")


def crop_image(
    image: np.ndarray,
    crop_box: np.ndarray,
    size: int,
    interpolation: int = cv2.INTER_LINEAR,
    antialias: bool = True,
) -> np.ndarray:
    """Cut a box out of an image and resize it to a square, black outside the image.

    Args:
        image: H x W (grayscale, made 3-channel), H x W x 3 (channel order kept; pipstc works in
            RGB) or H x W x 4 (alpha dropped), uint8.
        crop_box: (4,) box, pixels; may extend past the image.
        size: Side of the output.
        interpolation: OpenCV interpolation flag for the warp.
        antialias: When the crop shrinks the face more than 2x, first shrink the region with
            ``cv2.INTER_AREA`` by an integer factor, so small crops of large faces do not alias
            (a plain bilinear warp samples only 2 x 2 pixels per output pixel).

    Returns:
        (size, size, 3) uint8.
    """
    img = _as_rgb(image)
    box = _boxes(crop_box, "crop_box").reshape(4)
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"crop_box must be finite with x1 > x0 and y1 > y0, got {box.tolist()}")
    m = crop_matrix(box, size)
    factor = int(math.floor(min((box[2] - box[0]) / size, (box[3] - box[1]) / size)))
    if antialias and factor >= 2:
        h, w = img.shape[:2]
        # Only the part of the image under the box (plus a margin) is shrunk.
        rx0 = int(np.clip(math.floor(box[0]) - factor, 0, w))
        ry0 = int(np.clip(math.floor(box[1]) - factor, 0, h))
        rx1 = int(np.clip(math.ceil(box[2]) + factor, 0, w))
        ry1 = int(np.clip(math.ceil(box[3]) + factor, 0, h))
        sw, sh = (rx1 - rx0) // factor, (ry1 - ry0) // factor
        if sw >= 1 and sh >= 1:
            # Trim the region to a multiple of the factor: INTER_AREA then averages whole blocks.
            rx1, ry1 = rx0 + sw * factor, ry0 + sh * factor
            small = cv2.resize(img[ry0:ry1, rx0:rx1], (sw, sh), interpolation=cv2.INTER_AREA)
            if small.ndim == 2:
                small = small[..., None]
            # image px -> small px: (x - rx0) / factor; compose with the crop map.
            to_small_inv = np.array([[factor, 0.0, rx0], [0.0, factor, ry0], [0.0, 0.0, 1.0]])
            m = m @ to_small_inv
            img = small
        else:
            return np.zeros((size, size, 3), dtype=np.uint8)  # the box lies wholly outside the image
    out = cv2.warpAffine(
        img, _index_matrix(m), (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2)
