"""Cross-domain regimes like the paper's, built from face domains: a labeled source, a broad pool, two targets.

PIPNet's generalisable semi-supervised setting (Jin, Liao & Shao, IJCV 2021; docs/algorithm.md
section 3) trains on 300W (a real spread of pose, expression and light), adds unlabeled in-the-wild
CelebA faces, and tests on COFW-68 (heavy occlusion) and WFLW-68 (large pose, blur, make-up, harsh
light). A regime here has the same roles:

========== ==========================================================================================
source     the labeled domain: moderate pose (yaw +-35), full expression range, mixed light, light clutter
occlusion  target 1 (COFW-like): source geometry, most faces occluded by hands, glasses, patches
pose       target 2 (WFLW-like): large pose, blur, low resolution, harsh or dim light, sensor noise
pool       the unlabeled domain: broader in-the-wild faces that span both targets at moderate rates
========== ==========================================================================================

``severity`` (``mild`` | ``medium`` | ``severe``) moves the targets and the pool away from the source:
every knob is interpolated between its source value and its ``medium`` value with weight 0.5, 1 or
1.5 (extrapolated for ``severe``, then clipped to what the generator accepts). The ``medium`` values
were chosen from supervised runs alone (bench/RESULTS.md, "Self-training regime"), before any
self-training method ran on them, and are not changed after seeing their results.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from synthetic_faces.generator import DomainConfig

__all__ = ["ROLES", "SEVERITIES", "regime_domains", "regime_version"]

SEVERITIES = {"mild": 0.5, "medium": 1.0, "severe": 1.5}
ROLES = ("source", "occlusion", "pose", "pool")

SOURCE = DomainConfig(
    name="source",
    face_scale=(0.45, 0.62),
    center_jitter=0.05,
    yaw=(-35.0, 35.0),
    pitch=(-15.0, 15.0),
    roll=(-15.0, 15.0),
    identity=1.0,
    expression=1.0,
    ambient=(0.60, 0.90),
    light=(0.10, 0.40),
    light_angle=45.0,
    color_cast=0.06,
    background="clutter",
    clutter=(0, 10),
    hair_prob=0.85,
    occluder_prob=0.10,
    max_occluders=1,
    blur_sigma=(0.0, 0.8),
    motion_blur_prob=0.02,
    low_res_prob=0.05,
    noise_sigma=(0.5, 4.0),
    jpeg_quality=(70, 95),
    grayscale_prob=0.03,
)

# The medium targets and pool, as changes of the source's knobs.
_MEDIUM: dict[str, dict[str, Any]] = {
    "occlusion": dict(
        occluder_prob=1.0, max_occluders=4, occluder_scale=1.5, clutter=(4, 20), identity=1.1, yaw=(-40.0, 40.0),
        blur_sigma=(0.0, 1.2),
    ),  # fmt: skip
    "pose": dict(
        yaw=(-60.0, 60.0), pitch=(-28.0, 28.0), roll=(-32.0, 32.0), ambient=(0.35, 0.80), light=(0.30, 0.80),
        light_angle=75.0, color_cast=0.12, blur_sigma=(0.0, 2.2), motion_blur_prob=0.20, low_res_prob=0.25,
        noise_sigma=(2.0, 10.0), jpeg_quality=(35, 90), clutter=(6, 25), face_scale=(0.38, 0.62),
        center_jitter=0.08, grayscale_prob=0.06,
    ),  # fmt: skip
    "pool": dict(
        yaw=(-55.0, 55.0), pitch=(-25.0, 25.0), roll=(-28.0, 28.0), ambient=(0.40, 0.88), light=(0.15, 0.70),
        light_angle=70.0, color_cast=0.10, occluder_prob=0.45, max_occluders=2, blur_sigma=(0.0, 1.8),
        motion_blur_prob=0.10, low_res_prob=0.15, noise_sigma=(1.0, 8.0), jpeg_quality=(40, 95), clutter=(2, 25),
        occluder_scale=1.25,
        face_scale=(0.40, 0.62), center_jitter=0.07, identity=1.15, grayscale_prob=0.05,
    ),  # fmt: skip
}

# What the generator accepts, for extrapolated (severe) settings.
_LIMITS: dict[str, tuple[float, float]] = {
    "yaw": (-80.0, 80.0), "pitch": (-40.0, 40.0), "roll": (-45.0, 45.0), "face_scale": (0.25, 0.8),
    "ambient": (0.15, 1.0), "light": (0.0, 1.0), "light_angle": (0.0, 85.0), "jpeg_quality": (10, 100),
}  # fmt: skip


def _lerp(a: Any, b: Any, t: float) -> Any:
    if isinstance(a, tuple):
        return tuple(_lerp(x, y, t) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(a, str):
        return b
    value = a + (b - a) * t
    return int(round(value)) if isinstance(a, int) and isinstance(b, int) else float(value)


def _clip(name: str, value: Any) -> Any:
    if name.endswith("_prob"):
        return min(max(value, 0.0), 1.0)
    if name in _LIMITS:
        lo, hi = _LIMITS[name]
        if isinstance(value, tuple):
            return tuple(type(v)(min(max(v, lo), hi)) for v in value)
        return type(value)(min(max(value, lo), hi))
    if isinstance(value, tuple):
        return tuple(max(v, 0) for v in value)
    return max(value, 0) if isinstance(value, int | float) else value


def regime_domains(severity: str = "medium", image_size: int = 256) -> dict[str, DomainConfig]:
    """The four domains of a regime (:data:`ROLES`) at ``severity`` (a key of :data:`SEVERITIES`).

    Raises:
        ValueError: an unknown severity (the message lists the known ones).
    """
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}; use one of {', '.join(SEVERITIES)}")
    t = SEVERITIES[severity]
    source = dataclasses.replace(SOURCE, image_size=image_size)
    out = {"source": source}
    for role, changes in _MEDIUM.items():
        values = {k: _clip(k, _lerp(getattr(source, k), v, t)) for k, v in changes.items()}
        out[role] = dataclasses.replace(source, name=role, **values)
    return out


def regime_version(severity: str = "medium", image_size: int = 256) -> str:
    """8 hex digits that change whenever any knob of the regime's domains changes (for caches of its faces)."""
    import hashlib

    domains = regime_domains(severity, image_size)
    return hashlib.sha1(repr(sorted((k, dataclasses.astuple(v)) for k, v in domains.items())).encode()).hexdigest()[:8]
