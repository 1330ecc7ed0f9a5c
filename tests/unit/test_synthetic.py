"""The synthetic face generator: deterministic, landmarks on the drawn features, domains that differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from annotations.formats import read_pts_folder
from pipnet_core.schemes import get_scheme
from synthetic_faces import (
    DOMAINS,
    NUM_LANDMARKS,
    DomainConfig,
    generate_batch,
    generate_face,
    iter_faces,
    write_dataset,
)

# A frontal, clean studio face: the feature checks below read single pixels.
CLEAN = dataclasses.replace(
    DOMAINS["studio"], yaw=(0.0, 0.0), pitch=(0.0, 0.0), roll=(0.0, 0.0), noise_sigma=(0.0, 0.0),
    blur_sigma=(0.0, 0.0), jpeg_quality=(95, 95), expression=0.0,
)  # fmt: skip


def _pixel(img: np.ndarray, p: np.ndarray) -> np.ndarray:
    return img[int(round(float(p[1]))), int(round(float(p[0])))].astype(np.float64)


def _patch(img: np.ndarray, p: np.ndarray) -> np.ndarray:
    x, y = int(round(float(p[0]))), int(round(float(p[1])))
    return img[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).astype(np.float64).mean(axis=0)


def _skin(img: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Mean colour of both cheeks (half-way between the jaw and the nose wings)."""
    return (_patch(img, (lm[3] + lm[31]) / 2) + _patch(img, (lm[13] + lm[35]) / 2)) / 2


def test_same_seed_same_face_and_different_seeds_differ() -> None:
    for domain in DOMAINS.values():
        a = generate_face(np.random.default_rng([3, 7]), domain)
        b = generate_face(np.random.default_rng([3, 7]), domain)
        c = generate_face(np.random.default_rng([3, 8]), domain)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a[0], c[0])
        assert not np.array_equal(a[1], c[1])


def test_shapes_types_and_landmarks_inside_the_image() -> None:
    for domain in DOMAINS.values():
        images, landmarks, visible = generate_batch(12, domain, seed=1)
        s = domain.image_size
        assert images.shape == (12, s, s, 3) and images.dtype == np.uint8
        assert landmarks.shape == (12, NUM_LANDMARKS, 2) and landmarks.dtype == np.float32
        assert visible.shape == (12, NUM_LANDMARKS) and visible.dtype == bool
        assert np.isfinite(landmarks).all()
        assert landmarks.min() >= 0 and landmarks.max() <= s - 1
        # Faces fill a sensible part of the image (the domain's face_scale of the landmark box).
        width = landmarks[:, :, 0].max(1) - landmarks[:, :, 0].min(1)
        height = landmarks[:, :, 1].max(1) - landmarks[:, :, 1].min(1)
        assert (np.maximum(width, height) > 0.25 * s).all()


def test_eye_landmarks_sit_on_eye_pixels_not_skin() -> None:
    for i in range(12):
        img, lm, vis = generate_face(np.random.default_rng([5, i]), CLEAN)
        assert vis.all()  # frontal, no occluders
        skin = _skin(img, lm)
        for k in range(36, 48):
            diff = np.abs(_pixel(img, lm[k]) - skin).sum()
            assert diff > 30, f"face {i}: eye landmark {k} looks like skin (colour distance {diff:.0f})"
        for eye in (slice(36, 42), slice(42, 48)):
            centre = lm[eye].mean(axis=0)  # sclera/iris between the lids
            assert np.abs(_patch(img, centre) - skin).sum() > 40


def test_mouth_corners_are_lip_coloured_and_brows_dark() -> None:
    def redness(rgb: np.ndarray) -> float:
        return float(rgb[0] / max(rgb.sum(), 1.0))

    for i in range(12):
        img, lm, _ = generate_face(np.random.default_rng([6, i]), CLEAN)
        skin = _skin(img, lm)
        for k in (48, 54):
            p = _pixel(img, lm[k])
            assert redness(p) > redness(skin) + 0.05, (
                f"face {i}: mouth corner {k} is not lip-coloured: {p} vs skin {skin}"
            )
        brows = np.array([_pixel(img, lm[k]).sum() for k in range(17, 27)])
        assert (brows < 0.75 * skin.sum()).all(), f"face {i}: a brow landmark is not on the (darker) brow"


def test_jaw_landmarks_sit_on_the_face_outline() -> None:
    for i in range(8):
        img, lm, _ = generate_face(np.random.default_rng([9, i]), CLEAN)
        skin = _skin(img, lm)
        centre = lm[30]
        steps = []
        for k in range(4, 13):  # lower jaw: skin inside, neck shadow or background outside
            out = (lm[k] - centre) / np.linalg.norm(lm[k] - centre)
            inside, outside = _patch(img, lm[k] - 4 * out), _patch(img, lm[k] + 4 * out)
            assert np.abs(inside - skin).sum() < np.abs(outside - skin).sum()
            steps.append(np.abs(inside - outside).sum())
        assert np.mean(steps) > 20


def test_wild_is_harder_than_studio() -> None:
    _, lm_s, vis_s = generate_batch(40, DOMAINS["studio"], seed=2)
    _, lm_w, vis_w = generate_batch(40, DOMAINS["wild"], seed=2)
    assert vis_s.mean() > 0.97
    assert vis_w.mean() < vis_s.mean() - 0.03  # occluders and self-occlusion hide landmarks
    assert (~vis_w).any(axis=1).sum() >= 10

    def nose_offset(lm: np.ndarray) -> np.ndarray:
        """How far the nose tip sits from the jaw's middle, in jaw widths: ~0 frontal, large in profile."""
        mid = (lm[:, 0] + lm[:, 16]) / 2
        return np.linalg.norm(lm[:, 30] - mid, axis=1) / np.linalg.norm(lm[:, 16] - lm[:, 0], axis=1)

    assert nose_offset(lm_w).max() > nose_offset(lm_s).max() + 0.1  # profile-ish faces exist in the wild


def test_write_dataset_is_a_300w_folder_with_exact_landmarks(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path / "d", 4, DOMAINS["studio"], seed=4)
    assert [p.name for p in paths] == [f"studio_s4_{i:06d}.jpg" for i in range(4)]
    assert all(p.with_suffix(".pts").is_file() for p in paths)
    result = read_pts_folder(tmp_path / "d", get_scheme("300w"))
    assert len(result.samples) == 4 and len(result.rejects) == 0
    expected = np.stack([lm for _, lm, _ in iter_faces(4, DOMAINS["studio"], seed=4)])
    order = np.argsort([Path(u).name for u in result.samples["image_uri"]])
    np.testing.assert_array_equal(result.landmarks[order], expected)  # bit-exact through the .pts text
    assert (result.samples["width"] == 256).all() and (result.samples["height"] == 256).all()


def test_write_dataset_shards_match_one_run(tmp_path: Path) -> None:
    whole = write_dataset(tmp_path / "a", 3, DOMAINS["wild"], seed=5, image_format="png")
    part = write_dataset(tmp_path / "b", 2, DOMAINS["wild"], seed=5, start_index=1, image_format="png")
    assert [p.name for p in part] == [p.name for p in whole[1:]]
    for x, y in zip(whole[1:], part, strict=True):
        assert x.read_bytes() == y.read_bytes()
        assert x.with_suffix(".pts").read_text() == y.with_suffix(".pts").read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"yaw": (10.0, -10.0)},
        {"occluder_prob": 1.5},
        {"image_size": 32},
        {"background": "stripes"},
        {"jpeg_quality": (0, 90)},
    ],
)
def test_domain_config_rejects_bad_values(change: dict) -> None:
    with pytest.raises(ValueError, match="DomainConfig"):
        DomainConfig(**change)


def test_other_image_sizes_work() -> None:
    domain = dataclasses.replace(DOMAINS["wild"], image_size=128)
    img, lm, _ = generate_face(np.random.default_rng(0), domain)
    assert img.shape == (128, 128, 3)
    assert lm.max() <= 127
