"""Parametric 3D layout of the 68 landmarks (300W order) for the synthetic faces: shape, pose, projection.

Private to :mod:`synthetic_faces.generator`. The frontal x/y layout is the official 300W mean face of
PIPNet (``get_scheme("300w").meanface_array``), made left-right symmetric; depths are hand-set to
typical adult proportions, not fitted to a 3D face model: nose tip about a quarter face width in
front of the eye corners, jaw angles about 0.4 behind. Units are face
widths (jaw 0 to jaw 16 of the frontal template); x right, y down, z towards the camera. Curves
through landmarks are Catmull-Rom splines (Catmull & Rom 1974), which pass through every control
point, so a drawn contour contains its landmarks.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from pipnet_core.schemes import get_scheme

NUM_LANDMARKS = 68
JAW = np.arange(0, 17)
BROW_R, BROW_L = np.arange(17, 22), np.arange(22, 27)  # image-left brow first, as 300W orders them
NOSE_RIDGE, NOSE_LOW = np.arange(27, 31), np.arange(31, 36)
EYE_R, EYE_L = np.arange(36, 42), np.arange(42, 48)
MOUTH_OUT, MOUTH_IN = np.arange(48, 60), np.arange(60, 68)
N_FOREHEAD = 11  # extra (non-landmark) points of the forehead arc, from jaw 16 over the top to jaw 0
HEAD_CENTRE = np.array([0.0, -0.1, -0.5])  # rotation centre, face-width units (behind the face)
CAMERA_DISTANCE = 5.0  # face widths: mild perspective, as a portrait lens at ~1 m


@lru_cache(maxsize=1)
def template() -> np.ndarray:
    """(68 + forehead, 3) frontal layout in face-width units: x right, y down, z towards the camera."""
    scheme = get_scheme("300w")
    mean = scheme.meanface_array.copy()
    mirrored = mean[list(scheme.flip)]
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    sym = (mean + mirrored) / 2.0  # the official mean face is slightly asymmetric
    width = sym[16, 0] - sym[0, 0]
    xy = np.empty_like(sym)
    xy[:, 0] = (sym[:, 0] - 0.5) / width
    xy[:, 1] = (sym[:, 1] - sym[30, 1]) / width  # origin at the nose tip's height
    x = xy[:, 0]
    z = np.zeros(NUM_LANDMARKS)
    t = (np.arange(17) - 8) / 8.0
    z[JAW] = 0.08 - 0.50 * np.abs(t) ** 1.5  # chin forward, jaw angles back towards the ears
    z[17:27] = 0.06 - 0.9 * x[17:27] ** 2  # brow ridge
    z[NOSE_RIDGE] = (0.05, 0.12, 0.19, 0.27)  # nose bridge to tip
    z[NOSE_LOW] = (0.10, 0.15, 0.18, 0.15, 0.10)  # alae, nostrils, columella
    z[36:48] = 0.03 - 0.9 * x[36:48] ** 2  # outer eye corners sit behind the inner ones
    z[48:68] = 0.12 - 1.0 * x[48:68] ** 2
    z[[61, 62, 63, 65, 66, 67]] -= 0.01  # inner lip line slightly behind the outer one
    pts = np.concatenate([xy, z[:, None]], axis=1)
    # Forehead arc (not landmarks): from jaw 16 up and over to jaw 0, receding at the sides and top.
    y0 = (xy[0, 1] + xy[16, 1]) / 2.0
    theta = np.linspace(0.0, np.pi, N_FOREHEAD + 2)[1:-1]  # 0 = image right (jaw 16), pi = left (jaw 0)
    fx = 0.5 * np.cos(theta)
    fy = y0 - 0.52 * np.sin(theta)
    fz = -0.42 * np.abs(np.cos(theta)) ** 1.5 - 0.08 * np.sin(theta)
    return np.concatenate([pts, np.stack([fx, fy, fz], axis=1)], axis=0)


def vary_shape(rng: np.random.Generator, identity: float, expression: float) -> tuple[np.ndarray, float]:
    """Identity and expression: (68 + forehead, 3) points, and the mouth opening (face-width units).

    ``identity`` scales the spread of the proportions, ``expression`` the amplitude and probability
    of smile, open mouth, brow raise and blinks.
    """
    p = template().copy()
    s = identity
    n = rng.standard_normal(16) * s
    x, y = p[:, 0], p[:, 1]
    # Identity: overall aspect, jaw width, chin length, eye size/spacing/tilt, brow height, nose, mouth.
    y *= 1.0 + 0.06 * n[0]
    low = np.clip((y - 0.0) / 0.6, 0.0, 1.0)  # 0 above the nose tip, 1 at the chin
    x[:17] *= 1.0 + 0.08 * n[1] * low[:17]
    y[3:14] += 0.035 * n[2] * low[3:14]
    for eye, side in ((EYE_R, -1.0), (EYE_L, 1.0)):
        c = p[eye, :2].mean(axis=0)
        d = p[eye, :2] - c
        d[:, 0] *= 1.0 + 0.10 * n[3]
        d[:, 1] *= 1.0 + 0.15 * n[4]
        a = math.radians(5.0 * n[5]) * side
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        p[eye, :2] = c + np.array([side * 0.018 * n[6], 0.0]) + d @ rot.T
    y[17:27] -= 0.025 * n[7]
    y[28:36] += 0.03 * n[8] * np.linspace(0.3, 1.0, 8)
    x[31:36] *= 1.0 + 0.12 * n[9]
    p[27:36, 2] *= 1.0 + 0.15 * n[10]
    x[48:68] *= 1.0 + 0.08 * n[11]
    y[48:68] += 0.025 * n[12]
    y[49:54] -= 0.012 * n[13]  # upper lip thickness
    y[55:60] += 0.015 * n[14]  # lower lip thickness
    p[:NUM_LANDMARKS, :2] += rng.standard_normal((NUM_LANDMARKS, 2)) * 0.004 * s  # break perfect regularity
    # Expression.
    e = expression
    opening = 0.0
    if rng.random() < 0.35 * e:  # open mouth, jaw drops with it
        opening = rng.uniform(0.02, 0.14) * e
        y[[65, 66, 67]] += opening
        y[55:60] += opening
        y[[60, 64]] += 0.5 * opening
        y[[48, 54]] += 0.3 * opening
        y[4:13] += opening * 0.8 * low[4:13]
    smile = rng.uniform(-0.02, 0.04) * e
    y[[48, 54, 60, 64]] -= smile
    x[[48, 60]] -= 0.5 * smile
    x[[54, 64]] += 0.5 * smile
    y[17:27] -= rng.uniform(-0.015, 0.03) * e  # brow raise / frown
    for eye in (EYE_R, EYE_L):  # blink / squint: upper lid towards the lower one
        if rng.random() < 0.12 * e:
            c = rng.uniform(0.3, 0.95)
            upper, lower = eye[[1, 2]], eye[[5, 4]]
            y[upper] += c * (y[lower] - y[upper]) * 0.9
    return p, opening


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Rz(roll) Ry(yaw) Rx(pitch), angles in degrees; +yaw turns the face to the image right."""
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def project(points: np.ndarray, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the head centre and project. Returns (P, 2) face units and rotated (P, 3)."""
    q = (points - HEAD_CENTRE) @ rot.T + HEAD_CENTRE
    f = CAMERA_DISTANCE / (CAMERA_DISTANCE - q[:, 2])
    return q[:, :2] * f[:, None], q


def facing(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Whether each point's surface faces the camera, the normal taken from an ellipsoidal head."""
    radii = np.array([0.55, 0.75, 0.55])
    normal = (points - HEAD_CENTRE) / radii**2
    nz = normal @ rot[2]  # z of the rotated normal
    return nz > -0.02 * np.linalg.norm(normal, axis=1)


@lru_cache(maxsize=16)
def catmull_rom(k: int, sub: int, closed: bool) -> np.ndarray:
    """(M, k) weights of a Catmull-Rom spline through k points (passes through every one)."""
    t = np.arange(sub) / sub
    w = 0.5 * np.stack([-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3], axis=1)
    segments = k if closed else k - 1
    m = np.zeros((segments * sub + (0 if closed else 1), k))
    for s in range(segments):
        idx = [s - 1, s, s + 1, s + 2]
        for j, i in enumerate(idx):
            if closed:
                m[s * sub : (s + 1) * sub, i % k] += w[:, j]
            elif i < 0:  # reflected end point: P_-1 = 2 P_0 - P_1
                m[s * sub : (s + 1) * sub, 0] += 2 * w[:, j]
                m[s * sub : (s + 1) * sub, 1] -= w[:, j]
            elif i >= k:
                m[s * sub : (s + 1) * sub, k - 1] += 2 * w[:, j]
                m[s * sub : (s + 1) * sub, k - 2] -= w[:, j]
            else:
                m[s * sub : (s + 1) * sub, i] += w[:, j]
    if not closed:
        m[-1, k - 1] = 1.0
    return m


def curve(points: np.ndarray, sub: int = 4, closed: bool = False) -> np.ndarray:
    return catmull_rom(len(points), sub, closed) @ points
