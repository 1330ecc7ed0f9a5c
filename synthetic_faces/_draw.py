"""Drawing of the synthetic faces: OpenCV primitives at 1/16 px, colours, backgrounds, features, occluders, light.

Private to :mod:`synthetic_faces.generator`. Every feature is drawn from the landmarks so that each
landmark sits on something visible: jaw landmarks on the outline of the skin polygon, brows on the
centre line of thick strokes, eye landmarks on the lid lines and dark canthi, nose landmarks on the
ridge and the dark lower nose line, mouth landmarks on the lip contours and dark commissures.
Shading is Lambert's cosine law on an ellipsoidal head (computed at half resolution: it is smooth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from synthetic_faces._shape import BROW_L, BROW_R, EYE_L, EYE_R, JAW, NOSE_LOW, NUM_LANDMARKS, curve

SHIFT = 4  # cv2 drawing with 4 fractional bits: 1/16 px precision
_ONE = 1 << SHIFT
_AA = cv2.LINE_AA


def _fix(points: np.ndarray) -> np.ndarray:
    """Pixel coordinates -> cv2's fixed point for ``shift=4``."""
    return np.rint(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _fill(img: np.ndarray, polys: list[np.ndarray], color: tuple[float, ...]) -> None:
    cv2.fillPoly(img, [_fix(p) for p in polys], color, _AA, SHIFT)


def _line(
    img: np.ndarray, points: np.ndarray, color: tuple[float, ...], thickness: float, closed: bool = False
) -> None:
    cv2.polylines(img, [_fix(points)], closed, color, max(1, int(round(thickness))), _AA, SHIFT)


def _ellipse(
    img: np.ndarray,
    centre: np.ndarray,
    axes: tuple[float, float],
    angle: float,
    color: tuple[float, ...],
    thickness: int = -1,
) -> None:
    c = (int(round(centre[0] * _ONE)), int(round(centre[1] * _ONE)))
    ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
    cv2.ellipse(img, c, ax, angle, 0, 360, color, thickness, _AA, SHIFT)


_SKIN_LIGHT = np.array([236.0, 198.0, 172.0])
_SKIN_DARK = np.array([92.0, 58.0, 42.0])
HAIR = np.array([[20, 16, 14], [60, 40, 28], [110, 75, 45], [170, 130, 80], [120, 110, 105], [90, 30, 20]], float)
_IRIS = np.array([[70, 45, 25], [40, 28, 20], [70, 100, 140], [80, 110, 70], [110, 90, 50]], float)


def _c(rgb: np.ndarray) -> tuple[float, float, float]:
    r, g, b = rgb.tolist()
    return (min(max(r, 0.0), 255.0), min(max(g, 0.0), 255.0), min(max(b, 0.0), 255.0))


def skin_colour(rng: np.random.Generator, tone: float) -> np.ndarray:
    base = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone
    return base * (1.0 + rng.normal(0.0, 0.04, 3))


@lru_cache(maxsize=2)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed bank of N(0, 1) noise; faces take random windows of it (cheaper than fresh noise)."""
    return np.random.default_rng(20240601).standard_normal((size, size)).astype(np.float32)


def noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 N(0, 1) noise: a random window of the bank."""
    bank = _noise_bank(max(1024, 3 * size + 64))
    oy = int(rng.integers(0, bank.shape[0] - size + 1))
    ox = int(rng.integers(0, bank.shape[1] - 3 * size + 1))
    return bank[oy : oy + size, ox : ox + 3 * size].reshape(size, size, 3)


def background(rng: np.random.Generator, s: int, clutter: tuple[int, int] | None) -> np.ndarray:
    """(s, s, 3) uint8: a two-colour gradient, plus texture and random shapes if ``clutter`` gives a count range."""
    a = rng.uniform(40, 230, 3)
    b = np.clip(a + rng.normal(0, 25, 3), 0, 255)
    ends = np.stack([a, b]).astype(np.uint8)[None] if rng.random() < 0.5 else np.stack([a, b]).astype(np.uint8)[:, None]
    # Linear resize of two pixels gives a smooth gradient without a float pass over the image.
    img = cv2.resize(ends, (s, s), interpolation=cv2.INTER_LINEAR)
    if clutter is None:
        return img
    # Clutter: a coarse random texture and random shapes (edges and blobs the model must ignore).
    k = int(rng.integers(3, 9))
    tex = cv2.resize(rng.uniform(0, 255, (k, k, 3)).astype(np.uint8), (s, s), interpolation=cv2.INTER_LINEAR)
    img = cv2.addWeighted(img, 0.5, tex, 0.5, 0.0)
    count = int(rng.integers(clutter[0], clutter[1] + 1))
    # All random numbers at once: per-call generator overhead would dominate the drawing.
    kinds = rng.integers(0, 4, count)
    colors = rng.uniform(0, 255, (count, 3))
    centres = rng.uniform(-0.1, 1.1, (count, 2)) * s
    spans = rng.uniform(-1.0, 1.0, (count, 7, 2)) * s
    sizes = rng.uniform(0.02, 0.25, (count, 2)) * s
    u = rng.random((count, 4))
    for i in range(count):
        color, c, kind = _c(colors[i]), centres[i], kinds[i]
        filled = u[i, 0] < 0.6
        width = 1 + int(u[i, 1] * 4)
        if kind == 0:
            cv2.rectangle(img, _ipt(c), _ipt(c + 0.4 * spans[i, 0]), color, -1 if filled else width)
        elif kind == 1:
            _ellipse(img, c, (sizes[i, 0], sizes[i, 1]), float(u[i, 2] * 180), color, -1 if filled else width)
        elif kind == 2:
            cv2.line(img, _ipt(c), _ipt(c + 0.6 * spans[i, 0]), color, width, _AA)
        else:
            _fill(img, [c + 0.2 * spans[i, : 3 + int(u[i, 3] * 4)]], color)
    return img


def _ipt(p: np.ndarray) -> tuple[int, int]:
    return (int(round(p[0])), int(round(p[1])))


@dataclass
class Face:
    """Projected geometry of one face in image pixels."""

    lm: np.ndarray  # (68, 2)
    forehead: np.ndarray  # (F, 2)
    width: float  # face width in px (jaw 0 to jaw 16 of the frontal template)
    roll: float
    yaw: float
    opening: float


def draw_head(
    img: np.ndarray, rng: np.random.Generator, f: Face, facing: np.ndarray, skin: np.ndarray, hair: np.ndarray | None
) -> list[np.ndarray]:
    """Clothes, neck, hair, ears, face; returns the head's polygons (where the head's shading applies)."""
    lm, fw = f.lm, f.width
    outline = np.concatenate([lm[JAW], f.forehead])
    centre = outline.mean(axis=0)
    s = img.shape[0]
    # Clothes and neck, below the jaw.
    chin = lm[8]
    down = lm[8] - (lm[19] + lm[24]) / 2.0
    down /= max(np.linalg.norm(down), 1e-6)
    side = np.array([-down[1], down[0]])
    clothes = _c(rng.uniform(20, 230, 3))
    _ellipse(img, chin + down * 1.25 * fw, (1.3 * fw, 0.6 * fw), math.degrees(math.atan2(side[1], side[0])), clothes)
    neck = np.array([lm[4] + side * 0.02 * fw, lm[12] - side * 0.02 * fw, lm[12] + down * 2 * s, lm[4] + down * 2 * s])
    _fill(img, [neck], _c(skin * 0.72))
    face_poly = curve(outline, 3, closed=True)
    head = [face_poly, neck]
    if hair is not None:
        back = (outline - centre) * np.array([1.12, 1.1]) + centre - down * 0.04 * fw
        hair_back = np.concatenate([back[17:], back[:3], back[14:17]])
        _fill(img, [hair_back], _c(hair))
        head.append(hair_back)
    for ear, other, shown in ((lm[2], lm[14], facing[2]), (lm[14], lm[2], facing[14])):  # ears, half hidden
        if not shown:
            continue  # turned away: the head hides it
        out = ear - other
        out /= max(np.linalg.norm(out), 1e-6)
        _ellipse(img, ear + out * 0.03 * fw - down * 0.12 * fw, (0.07 * fw, 0.13 * fw), f.roll, _c(skin * 0.9))
    _fill(img, [face_poly], _c(skin))
    if hair is not None and rng.random() < 0.6:  # hairline fringe, kept well above the brows
        brows = lm[17:27]
        top = float((brows @ down).min())  # the highest brow point along the face's own vertical
        inner = (f.forehead - centre) * rng.uniform(0.35, 0.75) + centre
        excess = inner @ down - (top - 0.12 * fw)
        inner -= down[None, :] * np.maximum(excess, 0.0)[:, None]
        outer = (f.forehead - centre) * 1.04 + centre  # past the face edge: no anti-aliased seam
        _fill(img, [np.concatenate([outer, inner[::-1]])], _c(hair))
    return head


def draw_features(
    img: np.ndarray, rng: np.random.Generator, f: Face, skin: np.ndarray, brow: np.ndarray, light_x: float
) -> None:
    lm, fw = f.lm, f.width
    dark = skin * 0.55
    # Nose: a skin polygon (shows when the nose passes the cheek line), shadow side, lower line, nostrils.
    _fill(img, [lm[[27, 31, 32, 33, 34, 35]]], _c(skin * 1.02))
    shadow_side = 31 if light_x > 0 else 35
    _line(img, curve(lm[[27, 28, 29, shadow_side]], 3), _c(skin * 0.8), 0.025 * fw)
    _ellipse(img, lm[30], (0.035 * fw, 0.025 * fw), f.roll, _c(skin * 1.1))
    _line(img, curve(lm[NOSE_LOW], 4), _c(skin * 0.6), 0.018 * fw)
    for a, b in ((32, 31), (34, 35)):
        _ellipse(
            img, lm[a] * 0.7 + lm[b] * 0.3 - (lm[33] - lm[30]) * 0.15, (0.03 * fw, 0.016 * fw), f.roll, _c(skin * 0.35)
        )
    # Brows: thick curves along the landmarks.
    for idx in (BROW_R, BROW_L):
        thick = rng.uniform(0.035, 0.06) * fw
        _line(img, curve(lm[idx], 4), _c(brow), thick)
        _line(img, curve(lm[idx[:3]], 4) if idx[0] == 22 else curve(lm[idx[2:]], 4), _c(brow * 0.9), thick * 1.2)
    # Eyes: almond of sclera between the lid curves, iris and pupil inside, dark lash line on top.
    iris_rgb = _IRIS[rng.integers(len(_IRIS))] * rng.uniform(0.8, 1.2)
    gaze = rng.uniform(-0.15, 0.15, 2)
    for eye in (EYE_R, EYE_L):
        p = lm[eye]
        upper = curve(p[[0, 1, 2, 3]], 4)
        lower = curve(p[[3, 4, 5, 0]], 4)
        almond = np.concatenate([upper, lower[1:-1]])
        height = float(np.linalg.norm((p[1] + p[2]) / 2 - (p[4] + p[5]) / 2))
        width = float(np.linalg.norm(p[3] - p[0]))
        _draw_eye(img, almond, p, iris_rgb, width, height, gaze)
        _line(
            img, curve(p[[0, 1, 2, 3]] - np.array([0, 0.035 * fw]) * 1.0, 4)[2:-2], _c(skin * 0.8), 0.012 * fw
        )  # crease
        _line(img, upper, _c(dark * 0.5), max(1.0, 0.018 * fw))
        _line(img, lower, _c(skin * 0.45), max(1.0, 0.012 * fw))
        for corner in (p[0], p[3]):  # canthi: the darkest points of a real eye outline
            _ellipse(img, corner, (0.009 * fw, 0.009 * fw), 0.0, _c(dark * 0.5))
    # Mouth: outer lip polygon, inner mouth (dark and teeth when open), the lip line.
    lip = np.clip(skin * np.array([0.85, 0.52, 0.52]) + np.array([40.0, 0.0, 5.0]), 0, 255) * rng.uniform(0.85, 1.05)
    upper_out = curve(lm[48:55], 3)
    lower_out = curve(lm[[54, 55, 56, 57, 58, 59, 48]], 3)
    _fill(img, [np.concatenate([upper_out, lower_out[1:-1]])], _c(lip))
    upper_in = curve(lm[60:65], 3)
    lower_in = curve(lm[[64, 65, 66, 67, 60]], 3)
    _fill(
        img,
        [np.concatenate([lm[48:49], upper_out[: len(upper_out) // 2], upper_in[::-1][len(upper_in) // 2 :]])],
        _c(lip * 0.9),
    )
    if f.opening > 1.5:
        inner = np.concatenate([upper_in, lower_in[1:-1]])
        _fill(img, [inner], (45, 18, 20))
        teeth = np.concatenate([upper_in, upper_in[::-1] + np.array([0, min(0.3 * f.opening, 0.04 * fw)])])
        _fill(img, [teeth], (225, 222, 210))
    _line(img, upper_in, _c(lip * 0.45), max(1.0, 0.012 * fw))
    _line(img, lower_in, _c(lip * 0.45), max(1.0, 0.012 * fw))
    for outer, inner_corner in ((48, 60), (54, 64)):  # commissures: dark creases at the mouth corners
        _line(img, lm[[outer, inner_corner]], _c(lip * 0.5), max(1.0, 0.012 * fw))
        _ellipse(img, lm[outer], (0.012 * fw, 0.012 * fw), 0.0, _c(lip * 0.6))


def _draw_eye(
    img: np.ndarray,
    almond: np.ndarray,
    p: np.ndarray,
    iris_rgb: np.ndarray,
    width: float,
    height: float,
    gaze: np.ndarray,
) -> None:
    x0, y0 = np.floor(almond.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(almond.max(axis=0)).astype(int) + 2
    s = img.shape[0]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, s), min(y1, s)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    roi = img[y0:y1, x0:x1]
    off = np.array([x0, y0], dtype=float)
    mask = np.zeros(roi.shape[:2], np.uint8)
    _fill(mask, [almond - off], (255,))
    layer = roi.copy()
    _fill(layer, [almond - off], (236, 232, 225))
    if height > 1.0:
        centre = (p[0] + p[3]) / 2 + gaze * np.array([width * 0.5, height * 0.5]) - off
        r = 0.22 * width
        _ellipse(layer, centre, (r, r), 0, _c(iris_rgb))
        _ellipse(layer, centre, (0.45 * r, 0.45 * r), 0, (12, 10, 10))
        _ellipse(layer, centre + np.array([0.3 * r, -0.3 * r]), (0.15 * r, 0.15 * r), 0, (250, 250, 250))
    a = (mask.astype(np.float32) / 255.0)[..., None]
    roi[:] = (layer * a + roi * (1.0 - a) + 0.5).astype(np.uint8)


def occlude(
    img: np.ndarray, rng: np.random.Generator, f: Face, max_occluders: int, skin_tone: float, scale: float = 1.0
) -> np.ndarray:
    """Draw 1..max_occluders hands, glasses or patches; returns the (H, W) uint8 mask of what they hide.

    ``scale`` multiplies the size of hands and patches (glasses fit the eyes whatever it is).
    """
    s = img.shape[0]
    mask = np.zeros((s, s), np.uint8)
    lm, fw = f.lm, f.width
    hw = fw * scale  # hand and patch sizes
    for _ in range(int(rng.integers(1, max_occluders + 1))):
        kind = rng.choice(["hand", "glasses", "patch"], p=[0.35, 0.25, 0.4])
        if kind == "hand":
            target = lm[rng.choice([8, 30, 57, 36, 45, 3, 13])]
            hand_skin = _c(skin_colour(rng, float(np.clip(skin_tone + rng.normal(0, 0.1), 0, 1))))
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([math.cos(angle), math.sin(angle)])
            palm = target + direction * rng.uniform(0.15, 0.35) * fw
            axes = (0.22 * hw, 0.28 * hw)
            deg = math.degrees(angle) + 90
            for m in (img, mask):
                _ellipse(m, palm, axes, deg, hand_skin if m is img else (255,))
            normal = np.array([-direction[1], direction[0]])
            for k in range(4):
                base = palm - direction * 0.18 * hw + normal * (k - 1.5) * 0.1 * hw
                tip = base - direction * rng.uniform(0.2, 0.32) * hw
                for m in (img, mask):
                    _line(m, np.stack([base, tip]), hand_skin if m is img else (255,), 0.085 * hw)
                _line(img, np.stack([base, tip]) + normal * 0.045 * hw, _c(np.array(hand_skin) * 0.75), 1)
        elif kind == "glasses":
            frame = _c(rng.uniform(0, 120, 3))
            sun = rng.random() < 0.4
            lenses = []
            for eye in (EYE_R, EYE_L):
                c = lm[eye].mean(axis=0)
                w = np.linalg.norm(lm[eye[3]] - lm[eye[0]])
                lenses.append((c, (0.85 * w + 0.04 * fw, 0.55 * w + 0.05 * fw)))
            ang = math.degrees(math.atan2(*(lenses[1][0] - lenses[0][0])[::-1]))
            for c, ax in lenses:
                if sun:
                    _ellipse(img, c, ax, ang, _c(rng.uniform(5, 50, 3)))
                    _ellipse(mask, c, ax, ang, (255,))
                _ellipse(img, c, ax, ang, frame, max(1, int(0.02 * fw)))
            _line(
                img,
                np.stack(
                    [
                        lenses[0][0] + (lenses[1][0] - lenses[0][0]) * 0.3,
                        lenses[1][0] - (lenses[1][0] - lenses[0][0]) * 0.3,
                    ]
                ),
                frame,
                0.02 * fw,
            )
            for c, end in ((lenses[0][0], lm[0]), (lenses[1][0], lm[16])):
                _line(img, np.stack([c + (end - c) * 0.5, end]), frame, 0.018 * fw)
        else:
            centre = lm[rng.integers(NUM_LANDMARKS)] + rng.normal(0, 0.1, 2) * fw
            size = rng.uniform(0.12, 0.35) * hw
            color = _c(rng.uniform(0, 255, 3))
            poly = centre + rng.uniform(-1, 1, (int(rng.integers(3, 8)), 2)) * size
            if rng.random() < 0.5:
                poly = cv2.convexHull(poly.astype(np.float32)).reshape(-1, 2).astype(float)
            for m in (img, mask):
                _fill(m, [poly], color if m is img else (255,))
    return mask


@dataclass
class Light:
    ambient: float
    strength: float
    direction: np.ndarray  # (3,) unit vector towards the light; z towards the camera


def sample_light(
    rng: np.random.Generator, ambient: tuple[float, float], strength: tuple[float, float], max_angle: float
) -> Light:
    """A directional light within ``max_angle`` degrees of the camera axis, with ambient and Lambert strengths."""
    theta = math.radians(rng.uniform(0, max_angle))
    phi = rng.uniform(0, 2 * np.pi)
    direction = np.array([math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)])
    return Light(float(rng.uniform(*ambient)), float(rng.uniform(*strength)), direction)


def shade(f: Face, head: list[np.ndarray], light: Light, s: int) -> np.ndarray:
    """(H, W) float32 gain: Lambert shading of an ellipsoidal head inside the head's polygons, flat elsewhere.

    Computed at half resolution (shading is smooth) and resized up.
    """
    half = s // 2
    k = half / s
    g = (np.arange(half, dtype=np.float32) + 0.5) / k - 0.5
    outline = np.concatenate([f.lm[JAW], f.forehead])
    cx, cy = (float(v) for v in outline.mean(axis=0))
    ax = max(float((outline.max(axis=0) - outline.min(axis=0)).max()) * 0.6, 4.0)
    u = (g[None, :] - cx) * np.float32(1.0 / ax)  # float32 throughout: this is the costly part
    v = (g[:, None] - cy) * np.float32(1.0 / (ax * 1.15))
    r2 = u * u + v * v
    rr = np.sqrt(np.maximum(r2, 1.0))  # outside the ellipse: normals in the image plane
    nz = np.sqrt(np.maximum(1.0 - r2, 0.0))
    lx, ly, lz = (np.float32(x) for x in light.direction)
    lambert = np.maximum((u * lx + v * ly) / rr + nz * lz, 0.0)
    mask = np.zeros((half, half), np.uint8)
    cv2.fillPoly(mask, [_fix(p * k) for p in head], (255,), _AA, SHIFT)
    mask = mask.astype(np.float32) * np.float32(1.0 / 255.0)  # anti-aliased edge: no blur needed at half size
    flat = np.float32(lz * 0.85)
    norm = light.ambient + light.strength * float(lz)  # the face's front keeps its own colour
    shade = (mask * (lambert - flat) + flat) * np.float32(light.strength / norm) + np.float32(light.ambient / norm)
    return cv2.resize(shade, (s, s), interpolation=cv2.INTER_LINEAR)
