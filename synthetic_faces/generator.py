"""Synthetic faces with an exact 68-point (300W layout) ground truth, for the demo, tests and STC benchmark.

No public landmark dataset can be downloaded here (docs/architecture.md section 6), so pipstc draws its own
faces. The shape is a parametric 3D layout: the official 300W mean face of PIPNet
(``get_scheme("300w").meanface_array``, made left-right symmetric) gives x/y, each region gets a
plausible depth (hand-set: nose forward, eye corners and jaw receding), identity and expression
move groups of landmarks,
then the head is rotated by yaw/pitch/roll and projected with a mild perspective, so profile-ish
faces come out of geometry, not from a 2D rotation.

The face is then *drawn* so that every landmark sits on a visible feature: the jaw landmarks on the
outline of a skin polygon (jaw + a forehead arc), brow landmarks on the centre line of thick brow
curves, eye landmarks on the lid lines of filled almond eyes (iris inside), nose landmarks on the
ridge and the dark lower nose line, mouth landmarks on the outer and inner lip contours of filled
lips. Curves are Catmull-Rom splines through the landmarks (Catmull & Rom 1974), so they pass
exactly through them; everything is drawn with OpenCV at 1/16 px precision. Lighting (Lambert
shading on an ellipsoidal head), colour cast, clutter, occluders (hands, glasses, patches; the
landmarks they cover are flagged not visible), blur, noise and JPEG follow the domain's knobs.

Deterministic: all randomness comes from the NumPy generator passed in (``write_dataset`` uses
``default_rng([seed, index])`` per face, so any face can be regenerated alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from annotations.formats.pts import write_pts_file
from synthetic_faces._draw import (
    HAIR,
    Face,
    background,
    draw_features,
    draw_head,
    noise,
    occlude,
    sample_light,
    shade,
    skin_colour,
)
from synthetic_faces._shape import NUM_LANDMARKS, facing, project, rotation, vary_shape

__all__ = ["DOMAINS", "NUM_LANDMARKS", "DomainConfig", "generate_batch", "generate_face", "iter_faces", "write_dataset"]

Range = tuple[float, float]


@dataclass(frozen=True)
class DomainConfig:
    """The knobs of a face domain (ranges are sampled uniformly per face).

    Attributes are grouped as geometry, appearance and camera; see :data:`DOMAINS` for presets.
    """

    name: str = "studio"
    image_size: int = 256  # the model's input size (PIPNet crops are 256x256)
    face_scale: Range = (0.50, 0.62)  # landmark-box width as a fraction of the image width
    center_jitter: float = 0.04  # max shift of the face centre, fraction of the image size
    yaw: Range = (-12.0, 12.0)  # degrees; +/-12 keeps both eyes and the nose ridge frontal
    pitch: Range = (-8.0, 8.0)
    roll: Range = (-8.0, 8.0)
    identity: float = 1.0  # std multiplier of the identity (face proportions) variation
    expression: float = 0.5  # multiplier of expression amplitude and probability (smile, open mouth, blink)
    skin_tone: Range = (0.0, 1.0)  # 0 = lightest, 1 = darkest skin of the palette
    ambient: Range = (0.80, 0.92)  # ambient light level
    light: Range = (0.10, 0.20)  # Lambert (directional) light strength
    light_angle: float = 25.0  # max angle (degrees) of the light from the camera axis
    color_cast: float = 0.03  # max per-channel gain deviation (white balance)
    background: str = "plain"  # "plain" (a smooth gradient) or "clutter" (random shapes and texture)
    clutter: tuple[int, int] = (0, 0)  # number of random shapes in a cluttered background
    hair_prob: float = 0.9
    occluder_prob: float = 0.0  # probability that a face gets occluders (hand, glasses, patch)
    max_occluders: int = 1
    occluder_scale: float = 1.0  # size multiplier of hands and patches (COFW-like heavy occlusion: ~1.5)
    blur_sigma: Range = (0.0, 0.4)  # Gaussian blur sigma in px
    motion_blur_prob: float = 0.0
    low_res_prob: float = 0.0  # downscale 2-4x and back up (far faces, cheap cameras)
    noise_sigma: Range = (0.5, 2.0)  # Gaussian sensor noise, grey levels
    jpeg_quality: tuple[int, int] = (88, 95)
    grayscale_prob: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple) and (len(v) != 2 or v[0] > v[1]):
                raise ValueError(f"DomainConfig.{f.name}: a range is (low, high) with low <= high, got {v}")
            if f.name.endswith("_prob") and not 0.0 <= v <= 1.0:
                raise ValueError(f"DomainConfig.{f.name}: a probability must be in [0, 1], got {v}")
        if self.image_size < 64:
            raise ValueError(f"DomainConfig.image_size must be >= 64, got {self.image_size}")
        if self.background not in ("plain", "clutter"):
            raise ValueError(f"DomainConfig.background must be 'plain' or 'clutter', got {self.background!r}")
        if not (0.1 <= self.face_scale[0] and self.face_scale[1] <= 0.8):
            raise ValueError(f"DomainConfig.face_scale must lie in [0.1, 0.8], got {self.face_scale}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError(f"DomainConfig.jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")


DOMAINS: dict[str, DomainConfig] = {
    # Frontal, even light, plain background: the small labeled set of the cross-domain setting.
    "studio": DomainConfig(),
    # Pose, harsh light, clutter, occlusion, blur: pool and holdout (harder, but every feature stays drawn).
    "wild": DomainConfig(
        name="wild",
        face_scale=(0.38, 0.62),
        center_jitter=0.08,
        yaw=(-60.0, 60.0),
        pitch=(-25.0, 25.0),
        roll=(-30.0, 30.0),
        identity=1.3,
        expression=1.0,
        ambient=(0.35, 0.75),
        light=(0.3, 0.8),
        light_angle=75.0,
        color_cast=0.12,
        background="clutter",
        clutter=(8, 30),
        hair_prob=0.8,
        occluder_prob=0.5,
        max_occluders=2,
        blur_sigma=(0.0, 2.0),
        motion_blur_prob=0.15,
        low_res_prob=0.2,
        noise_sigma=(2.0, 10.0),
        jpeg_quality=(35, 90),
        grayscale_prob=0.05,
    ),
}


def _place(rng: np.random.Generator, d: DomainConfig) -> tuple[Face, np.ndarray]:
    """Shape, pose, projection and placement in the image: the face in pixels and which landmarks face the camera."""
    pts3, opening = vary_shape(rng, d.identity, d.expression)
    yaw, pitch, roll = (float(rng.uniform(*r)) for r in (d.yaw, d.pitch, d.roll))
    rot = rotation(yaw, pitch, roll)
    xy, _ = project(pts3, rot)
    facing_camera = facing(pts3[:NUM_LANDMARKS], rot)
    s = d.image_size
    lm = xy[:NUM_LANDMARKS]
    lo, hi = lm.min(axis=0), lm.max(axis=0)
    span = float((hi - lo).max())
    scale = float(rng.uniform(*d.face_scale)) * s / max(span, 1e-6)
    centre = s / 2.0 + rng.uniform(-d.center_jitter, d.center_jitter, 2) * s
    px = (xy - (lo + hi) / 2.0) * scale + centre
    # Keep every landmark inside the image (a 3 px margin): shift, then shrink if still needed.
    lmp = px[:NUM_LANDMARKS]
    margin = 3.0
    shift = np.maximum(margin - lmp.min(axis=0), 0.0) - np.maximum(lmp.max(axis=0) - (s - 1 - margin), 0.0)
    px += shift
    lmp = px[:NUM_LANDMARKS]
    if lmp.min() < margin or lmp.max() > s - 1 - margin:
        c = s / 2.0
        k = (c - margin) / max(np.abs(lmp - c).max(), 1e-6)
        px = (px - c) * k + c
        scale *= k
    face = Face(px[:NUM_LANDMARKS], px[NUM_LANDMARKS:], scale, roll, yaw, opening * scale)
    return face, facing_camera


def _render(rng: np.random.Generator, d: DomainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Draw one face before JPEG: (image RGB uint8, landmarks (68, 2), visible (68,), jpeg quality)."""
    s = d.image_size
    face, facing_camera = _place(rng, d)
    tone = float(rng.uniform(*d.skin_tone))
    skin = skin_colour(rng, tone)
    hair = HAIR[rng.integers(len(HAIR))] * rng.uniform(0.8, 1.2) if rng.random() < d.hair_prob else None
    brow_base = hair if hair is not None else HAIR[rng.integers(len(HAIR))]
    brow = np.minimum(brow_base, skin * 0.5)  # brows always darker than the skin around them
    img = background(rng, s, d.clutter if d.background == "clutter" else None)
    light = sample_light(rng, d.ambient, d.light, d.light_angle)
    head = draw_head(img, rng, face, facing_camera, skin, hair)
    draw_features(img, rng, face, skin, brow, float(light.direction[0]))
    visible = facing_camera.copy()
    if rng.random() < d.occluder_prob:
        mask = occlude(img, rng, face, d.max_occluders, tone, d.occluder_scale)
        xi = np.clip(np.round(face.lm[:, 0]).astype(int), 0, s - 1)
        yi = np.clip(np.round(face.lm[:, 1]).astype(int), 0, s - 1)
        visible &= mask[yi, xi] == 0
    # Optics first (on the drawing), then light, colour and sensor noise in one float pass.
    if rng.random() < d.low_res_prob:
        k = int(s / rng.uniform(2.0, 4.0))
        img = cv2.resize(cv2.resize(img, (k, k), interpolation=cv2.INTER_AREA), (s, s), interpolation=cv2.INTER_LINEAR)
    sigma = rng.uniform(*d.blur_sigma)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    if rng.random() < d.motion_blur_prob:
        length = int(rng.integers(3, 9))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1.0
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        img = cv2.filter2D(img, -1, kernel / max(float(kernel.sum()), 1e-6))
    gain = shade(face, head, light, s)
    gains = (1.0 + rng.uniform(-d.color_cast, d.color_cast, 3)).astype(np.float32)
    out = cv2.multiply(img.astype(np.float32), cv2.merge([gain * gains[0], gain * gains[1], gain * gains[2]]))
    sigma_noise = rng.uniform(*d.noise_sigma)
    if sigma_noise > 0.0:
        out = cv2.scaleAdd(noise(rng, s), float(sigma_noise), out)
    out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    if rng.random() < d.grayscale_prob:
        gray = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
        out = cv2.merge([gray, gray, gray])
    quality = int(rng.integers(d.jpeg_quality[0], d.jpeg_quality[1] + 1))
    return out, face.lm.astype(np.float32), visible, quality


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip in memory. RGB goes in as if it were BGR and comes back the same way (no
    channel copies); the artifacts differ from a true-order encode only by the luma weights."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "cv2.imencode failed"
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def generate_face(rng: np.random.Generator, domain: DomainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one synthetic face.

    Args:
        rng: Source of all randomness (the same state gives the same face).
        domain: The domain's knobs (see :data:`DOMAINS`).

    Returns:
        image (H, W, 3) uint8 RGB (JPEG artifacts included), landmarks (68, 2) float32 pixels
        (300W order, pixel centres at integer coordinates), visible (68,) bool (False where an
        occluder covers the landmark or the surface turns away from the camera).
    """
    img, lm, vis, quality = _render(rng, domain)
    return _jpeg(img, quality), lm, vis


def iter_faces(
    n: int, domain: DomainConfig, seed: int, start_index: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Faces ``start_index .. start_index + n - 1`` of the stream ``seed`` (each from ``default_rng([seed, i])``)."""
    for i in range(start_index, start_index + n):
        yield generate_face(np.random.default_rng([seed, i]), domain)


def generate_batch(
    n: int, domain: DomainConfig, seed: int, start_index: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` faces in memory: images (n, H, W, 3) uint8, landmarks (n, 68, 2) float32, visible (n, 68) bool."""
    s = domain.image_size
    images = np.empty((n, s, s, 3), np.uint8)
    landmarks = np.empty((n, NUM_LANDMARKS, 2), np.float32)
    visible = np.empty((n, NUM_LANDMARKS), bool)
    for k, (img, lm, vis) in enumerate(iter_faces(n, domain, seed, start_index)):
        images[k], landmarks[k], visible[k] = img, lm, vis
    return images, landmarks, visible


def write_dataset(
    folder: str | Path,
    n: int,
    domain: DomainConfig,
    seed: int,
    start_index: int = 0,
    image_format: str = "jpg",
) -> list[Path]:
    """Write ``n`` faces as a 300W-style folder: ``<name>.jpg`` (or ``.png``) and ``<name>.pts`` beside it.

    Names are ``<domain>_s<seed>_<index:06d>``, so shards (``start_index``) and several seeds can
    share a folder. JPEG files are encoded once at the face's sampled quality; PNG files hold the
    JPEG-degraded pixels of :func:`generate_face`.

    Returns:
        The image paths, in index order.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i in range(start_index, start_index + n):
        img, lm, _, quality = _render(np.random.default_rng([seed, i]), domain)
        stem = f"{domain.name}_s{seed}_{i:06d}"
        path = out / f"{stem}.{image_format}"
        if image_format == "jpg":
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        else:
            bgr = cv2.cvtColor(_jpeg(img, quality), cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"cannot encode {path}")
        path.write_bytes(buf.tobytes())
        write_pts_file(out / f"{stem}.pts", lm)
        paths.append(path)
    return paths
