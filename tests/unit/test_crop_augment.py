"""Crops and augmentations move landmarks with the image: checked by drawing dots and finding them."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from pipnet_core.augment import AugmentConfig, augment
from pipnet_core.crop import crop_image, crop_matrix, enlarge_box, from_crop, landmark_box, to_crop
from pipnet_core.schemes import get_scheme

# Distinct, fully saturated colours: no two share a value, none is black (the fill).
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)


def _dot_image(h: int, w: int, centres_idx: np.ndarray, radius: int = 1) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for (cx, cy), colour in zip(centres_idx, COLOURS, strict=False):
        img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1] = colour
    return img


def _find(img: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Continuous-pixel centroid of the pixels of one exact colour."""
    ys, xs = np.nonzero((img == colour).all(axis=2))
    assert len(xs) > 0, f"dot {colour.tolist()} vanished"
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def _find_near(img: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Centroid weighted by closeness to a colour (for bilinear crops, where colours blend)."""
    dist = np.abs(img.astype(float) - colour.astype(float)).sum(axis=2)
    weight = np.clip(1.0 - dist / 255.0, 0.0, None) ** 4
    assert weight.sum() > 0
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(weight * xs).sum() / weight.sum() + 0.5, (weight * ys).sum() / weight.sum() + 0.5])


# -- crop ------------------------------------------------------------------------------------------


def test_to_crop_from_crop_are_exact_inverses() -> None:
    rng = np.random.default_rng(0)
    origin = rng.uniform(-100, 2000, size=(5, 2))
    boxes = np.concatenate([origin, origin + rng.uniform(10, 800, size=(5, 2))], axis=1)
    px = rng.uniform(-500, 2500, size=(5, 68, 2))
    px[2, 3] = np.nan
    back = from_crop(to_crop(px, boxes), boxes)
    np.testing.assert_allclose(back, px, atol=1e-9, rtol=0)
    assert np.isnan(back[2, 3]).all()
    # single face
    np.testing.assert_allclose(from_crop(to_crop(px[0], boxes[0]), boxes[0]), px[0], atol=1e-9, rtol=0)
    # the box corners map to 0 and 1
    corners = np.array([[boxes[1, 0], boxes[1, 1]], [boxes[1, 2], boxes[1, 3]]])
    np.testing.assert_allclose(to_crop(corners, boxes[1]), [[0, 0], [1, 1]], atol=1e-12)
    with pytest.raises(ValueError):
        to_crop(px, boxes[0])


def test_crop_matrix_matches_to_crop() -> None:
    box = np.array([10.0, 20.0, 110.0, 170.0])
    m = crop_matrix(box, 64)
    pts = np.array([[10.0, 20.0], [110.0, 170.0], [37.5, 99.0]])
    mapped = pts @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(mapped, to_crop(pts, box) * 64, atol=1e-12)
    assert crop_matrix(np.stack([box, box]), 64).shape == (2, 2, 3)


def test_enlarge_box_and_landmark_box() -> None:
    box = np.array([100.0, 200.0, 200.0, 400.0])
    np.testing.assert_allclose(enlarge_box(box, 1.2), [90, 180, 210, 420])
    # the official demo crop: widen by 0.1 w on each side, move both y edges down by 0.1 h
    np.testing.assert_allclose(enlarge_box(box, (1.2, 1.0), shift_y=0.1), [90, 220, 210, 420])
    # CelebA: ymin += 0.15 h, ymax += 0.1 h
    np.testing.assert_allclose(enlarge_box(box, (1.2, 0.95), shift_y=0.125), [90, 230, 210, 420])
    assert enlarge_box(np.stack([box, box]), 1.3).shape == (2, 4)
    lm = np.array([[[3.0, 4.0], [np.nan, np.nan], [1.0, 9.0]], [[np.nan, np.nan]] * 3])
    out = landmark_box(lm)
    np.testing.assert_allclose(out[0], [1, 4, 3, 9])
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(landmark_box(lm[0]), [1, 4, 3, 9])


@pytest.mark.parametrize(
    ("box", "size", "antialias"),
    [
        ((40.0, 30.0, 240.0, 230.0), 128, True),  # 1.56x down
        ((-20.5, 10.25, 380.0, 330.0), 96, True),  # anisotropic, off the image's left edge
        ((30.0, 20.0, 290.0, 280.0), 64, True),  # 4x down: INTER_AREA pre-shrink
        ((30.0, 20.0, 290.0, 280.0), 64, False),
        ((100.0, 90.0, 160.0, 150.0), 120, True),  # 2x up
    ],
)
def test_dots_are_found_at_to_crop_positions(box: tuple, size: int, antialias: bool) -> None:
    centres = np.array([[60, 50], [200, 70], [130, 150], [80, 210], [115, 125], [150, 100]])
    img = _dot_image(300, 320, centres, radius=3)
    landmarks_px = centres + 0.5  # the centre of the dot's centre pixel (continuous coordinates)
    out = crop_image(img, np.array(box), size, antialias=antialias)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    expected = to_crop(landmarks_px, np.array(box)) * size
    checked = 0
    for k in range(len(centres)):
        if not ((expected[k] > 0.05 * size) & (expected[k] < 0.95 * size)).all():
            continue  # the dot is outside (or at the edge of) this crop
        found = _find_near(out, COLOURS[k])
        np.testing.assert_allclose(found, expected[k], atol=1.0)
        checked += 1
    assert checked >= 2


def test_crop_grayscale_and_outside() -> None:
    gray = np.full((50, 60), 77, np.uint8)
    out = crop_image(gray, np.array([-10.0, -10.0, 70.0, 60.0]), 32)
    assert out.shape == (32, 32, 3)
    assert (out[16, 16] == 77).all() and (out[0, 0] == 0).all()  # black outside the image
    far = crop_image(gray, np.array([1000.0, 1000.0, 1400.0, 1400.0]), 32)
    assert (far == 0).all()
    with pytest.raises(ValueError, match="x1 > x0"):
        crop_image(gray, np.array([10.0, 10.0, 5.0, 20.0]), 32)


# -- augment ---------------------------------------------------------------------------------------

SIZE = 128
IDX = np.array([[30, 40], [90, 35], [64, 70], [45, 100], [85, 95], [20, 20]])
LANDMARKS = (IDX + 0.5) / SIZE  # normalised, continuous convention


def _only(**kw: float) -> AugmentConfig:
    return dataclasses.replace(AugmentConfig.none(), **kw)


def _check_dots(out: np.ndarray, landmarks: np.ndarray, slot_of: list[int], tol: float = 1.5) -> None:
    for k in range(len(IDX)):
        target = landmarks[slot_of[k]] * SIZE
        if not ((target > 2) & (target < SIZE - 2)).all():
            continue  # the dot left the image
        np.testing.assert_allclose(_find(out, COLOURS[k]), target, atol=tol)


@pytest.mark.parametrize("seed", range(6))
def test_translate_moves_dots_with_landmarks(seed: int) -> None:
    img = _dot_image(SIZE, SIZE, IDX)
    out, lm = augment(img, LANDMARKS, np.random.default_rng(seed), None, _only(translate_p=1.0))
    assert not np.array_equal(out, img) or np.allclose(lm, LANDMARKS)
    _check_dots(out, lm, list(range(6)))
    assert ((lm >= 0) & (lm <= 1)).all()  # clipped, as the official code


def test_translate_clips_landmarks() -> None:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    lm = np.array([[0.01, 0.5], [0.99, 0.5], [0.5, 0.01], [0.5, 0.99]])
    for seed in range(20):
        _, out = augment(img, lm, np.random.default_rng(seed), None, _only(translate_p=1.0))
        assert ((out >= 0) & (out <= 1)).all()


def test_flip_moves_dot_i_to_slot_flip_i() -> None:
    flip = [1, 0, 2, 4, 3, 5]
    img = _dot_image(SIZE, SIZE, IDX)
    out, lm = augment(img, LANDMARKS, np.random.default_rng(0), flip, _only(flip_p=1.0))
    _check_dots(out, lm, flip, tol=0.01)  # mirroring is exact in the continuous convention
    np.testing.assert_allclose(lm[0], [1 - LANDMARKS[1, 0], LANDMARKS[1, 1]])
    # no table: no flip
    out2, lm2 = augment(img, LANDMARKS, np.random.default_rng(0), None, _only(flip_p=1.0))
    np.testing.assert_array_equal(out2, img)
    np.testing.assert_allclose(lm2, LANDMARKS)


@pytest.mark.parametrize("seed", range(6))
def test_rotation_moves_dots_with_landmarks(seed: int) -> None:
    img = _dot_image(SIZE, SIZE, IDX)
    out, lm = augment(img, LANDMARKS, np.random.default_rng(seed), None, _only(rotate_p=1.0))
    assert not np.allclose(lm, LANDMARKS)
    _check_dots(out, lm, list(range(6)))


def test_rotation_follows_the_spec_formula_and_is_not_clipped() -> None:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    lm = np.array([[0.9, 0.5], [0.99, 0.99]])
    seen_outside = False
    for seed in range(10):
        _, out = augment(img, lm, np.random.default_rng(seed), None, _only(rotate_p=1.0))
        # the angle from the first point (right of centre), then the formula of docs/algorithm.md section 2.9
        # for the second
        t = np.arctan2(-(out[0, 1] - 0.5), out[0, 0] - 0.5)
        assert abs(np.rad2deg(t)) <= 30.0 + 1e-9
        assert out[1, 0] == pytest.approx(0.5 + 0.49 * np.cos(t) + 0.49 * np.sin(t))
        assert out[1, 1] == pytest.approx(0.5 - 0.49 * np.sin(t) + 0.49 * np.cos(t))
        seen_outside |= bool((out > 1.0).any())
    assert seen_outside  # a corner landmark rotated out of the crop is kept there


def test_combined_with_a_real_flip_table_and_nan() -> None:
    scheme = get_scheme("aflw")
    mf = scheme.meanface_array.copy()
    mf[3] = np.nan
    img = np.full((SIZE, SIZE, 3), 128, np.uint8)
    out, lm = augment(img, mf, np.random.default_rng(3), scheme.flip, _only(flip_p=1.0, rotate_p=1.0))
    assert np.isnan(lm[scheme.flip[3]]).all()
    assert np.isfinite(np.delete(lm, scheme.flip[3], axis=0)).all()
    assert np.isnan(mf[3]).all() and mf.shape == (19, 2)  # input untouched


def test_blur_grayscale_occlusion_leave_landmarks() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    original = img.copy()
    blurred = 0
    for seed in range(6):  # sigma = U * 5 * 128 / 256: a tiny U leaves the image as it is
        out, lm = augment(img, LANDMARKS, np.random.default_rng(seed), None, _only(blur_p=1.0))
        np.testing.assert_allclose(lm, LANDMARKS)
        assert out.std() <= img.std()
        blurred += out.std() < 0.9 * img.std()
    assert blurred >= 4
    out, _ = augment(img, LANDMARKS, np.random.default_rng(5), None, _only(grayscale_p=1.0))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
    changed = 0
    for seed in range(10):
        out, lm = augment(img, LANDMARKS, np.random.default_rng(seed), None, _only(occlusion_p=1.0))
        np.testing.assert_allclose(lm, LANDMARKS)
        diff = (out != img).any(axis=2)
        if diff.any():
            ys, xs = np.nonzero(diff)
            assert (ys.max() - ys.min() + 1) <= 0.4 * SIZE and (xs.max() - xs.min() + 1) <= 0.4 * SIZE
            changed += 1
    assert changed >= 5
    np.testing.assert_array_equal(img, original)


def test_default_config_is_reproducible_and_checks_input() -> None:
    img = _dot_image(SIZE, SIZE, IDX)
    a = augment(img, LANDMARKS, np.random.default_rng(7), list(range(6)), AugmentConfig())
    b = augment(img, LANDMARKS, np.random.default_rng(7), list(range(6)), AugmentConfig())
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="square"):
        augment(np.zeros((10, 12, 3), np.uint8), LANDMARKS, np.random.default_rng(0), None, AugmentConfig())
