"""Training augmentation of PIPNet, with landmarks moved with the image (docs/algorithm.md section 2.9).

The official pipeline (``lib/data_utils.py``) applies, in this order, to the stored square crop:
translate, occlusion, horizontal flip, rotation, Gaussian blur, grayscale — each with its own
probability, nearest-neighbour resampling and black fill (PIL defaults), no scale or colour jitter.
Here the same steps run on OpenCV, with pixel sizes given at the reference input of 256 and scaled
to the actual input size, so a 128 px model sees the same relative augmentation.

Landmarks are normalised crop coordinates (pipnet_core.crop conventions: the crop is [0, 1]^2, its
centre is (0.5, 0.5), mirroring is ``x -> 1 - x``). Translation clips them to [0, 1] like the official
code; rotation does not (the target encoder clamps the cell); NaN (missing) landmarks stay NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["AugmentConfig", "augment"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the augmentations; defaults are the official ones.

    Attributes:
        translate_p: Official p = 0.5.
        translate_px: Largest shift at the reference size: the official ``int((U - 0.5) * 60)``
            gives integer shifts within +-29 px at 256.
        occlusion_p: Official p = 0.5: a solid random-colour rectangle teaches the NRM to fill in
            hidden landmarks from visible ones; there is no visibility label.
        occlusion_max_frac: Rectangle sides up to 0.4 of the image side (official).
        occlusion_margin_px: The official placement keeps the rectangle 10 px off the bottom/right.
        flip_p: Official p = 0.5; skipped when the scheme has no flip table (asymmetric layouts,
            issue #32).
        rotate_p: Official p = 0.5.
        rotate_max_deg: Official +-30 degrees, counter-clockwise positive, about the crop centre.
        blur_p: Official p = 0.3 (``U > 0.7``).
        blur_max_sigma: PIL's GaussianBlur radius (its standard deviation) is ``U * 5`` at 256.
        grayscale_p: torchvision RandomGrayscale p = 0.2, as in the official transform.
        reference_size: Input size the pixel values above are given for (256, the official input).
    """

    translate_p: float = 0.5
    translate_px: float = 30.0
    occlusion_p: float = 0.5
    occlusion_max_frac: float = 0.4
    occlusion_margin_px: float = 10.0
    flip_p: float = 0.5
    rotate_p: float = 0.5
    rotate_max_deg: float = 30.0
    blur_p: float = 0.3
    blur_max_sigma: float = 5.0
    grayscale_p: float = 0.2
    reference_size: int = 256

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all (every probability 0)."""
        return cls(translate_p=0.0, occlusion_p=0.0, flip_p=0.0, rotate_p=0.0, blur_p=0.0, grayscale_p=0.0)


def _translate(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple:
    size = img.shape[0]
    reach = cfg.translate_px * size / cfg.reference_size
    dx = int((rng.random() - 0.5) * 2 * reach)  # int() truncates toward zero, as the official code
    dy = int((rng.random() - 0.5) * 2 * reach)
    m = np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]])  # content moves by (-dx, -dy), as PIL's affine
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    moved = lm - np.array([dx, dy], dtype=lm.dtype) / size
    return out, np.clip(moved, 0.0, 1.0)  # NaN passes through clip


def _occlude(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    size = img.shape[0]
    margin = cfg.occlusion_margin_px * size / cfg.reference_size
    h = int(cfg.occlusion_max_frac * size * rng.random())
    w = int(cfg.occlusion_max_frac * size * rng.random())
    x0 = int(max(size - w - margin, 0) * rng.random())
    y0 = int(max(size - h - margin, 0) * rng.random())
    colour = rng.integers(0, 255, size=3)  # each channel 0..254, as the official randint(0, 254)
    out = img.copy()
    out[y0 : y0 + h, x0 : x0 + w] = colour.astype(np.uint8)
    return out


def _flip(img: np.ndarray, lm: np.ndarray, flip: Sequence[int]) -> tuple:
    perm = np.asarray(flip, dtype=np.int64)
    if perm.shape != (lm.shape[0],):
        raise ValueError(f"flip table has {perm.shape[0]} entries but there are {lm.shape[0]} landmarks")
    out = lm[perm].copy()  # slot i takes landmark flip[i]
    out[:, 0] = 1.0 - out[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), out


def _rotate(img: np.ndarray, lm: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> tuple:
    size = img.shape[0]
    deg = (rng.random() * 2 - 1) * cfg.rotate_max_deg
    centre = (size - 1) / 2  # the crop centre, as a pixel index (normalised 0.5)
    m = cv2.getRotationMatrix2D((centre, centre), deg, 1.0)  # counter-clockwise for positive angles
    out = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    px, py = lm[:, 0] - 0.5, lm[:, 1] - 0.5
    # docs/algorithm.md section 2.9: x' = 0.5 + dx cos + dy sin, y' = 0.5 - dx sin + dy cos; not clipped.
    rotated = np.stack([0.5 + px * c + py * s, 0.5 - px * s + py * c], axis=1).astype(lm.dtype)
    return out, rotated


def _blur(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    sigma = rng.random() * cfg.blur_max_sigma * img.shape[0] / cfg.reference_size
    if sigma < 0.1:  # a kernel this narrow leaves the image unchanged
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def augment(
    image: np.ndarray,
    landmarks: np.ndarray,
    rng: np.random.Generator,
    flip: Sequence[int] | None,
    config: AugmentConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment one training crop and move its landmarks with it.

    Args:
        image: (S, S, 3) uint8 square crop, RGB.
        landmarks: (N, 2) normalised crop coordinates; NaN = missing.
        rng: Source of randomness (seed it per sample/worker for reproducible training).
        flip: The scheme's flip table (``flip[i]`` lands at slot i), or None to never flip.
        config: Probabilities and ranges.

    Returns:
        ``(image, landmarks)``: a new (S, S, 3) uint8 image and (N, 2) landmarks (float32 or the
        input's float64). The inputs are not modified.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[0] != img.shape[1] or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"augment needs a square (S, S, 3) uint8 crop, got {img.shape} {img.dtype}")
    lm = np.array(landmarks, dtype=np.result_type(np.asarray(landmarks).dtype, np.float32))
    if lm.ndim != 2 or lm.shape[1] != 2:
        raise ValueError(f"landmarks must have shape (N, 2), got {lm.shape}")
    if rng.random() < config.translate_p:
        img, lm = _translate(img, lm, rng, config)
    if rng.random() < config.occlusion_p:
        img = _occlude(img, rng, config)
    if flip is not None and rng.random() < config.flip_p:
        img, lm = _flip(img, lm, flip)
    if rng.random() < config.rotate_p:
        img, lm = _rotate(img, lm, rng, config)
    if rng.random() < config.blur_p:
        img = _blur(img, rng, config)
    if rng.random() < config.grayscale_p:
        gray = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma, as torchvision
        img = np.repeat(gray[..., None], 3, axis=2)
    if img is image:
        img = img.copy()
    return img, lm
