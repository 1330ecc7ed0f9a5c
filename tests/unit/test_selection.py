"""Selection of faces for review and the pose descriptor (annotations/review/selection.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotations.review.selection import pose_descriptor, select_for_review
from pipnet_core.schemes import get_scheme, scheme_from_dict

S300 = get_scheme("300w")


def _frame(n: int, seed: int = 0, **cols: object) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = {
        "sample_id": [f"s{i:04d}" for i in range(n)],
        "split": ["pool"] * n,
        "predicted_nme": rng.uniform(0.01, 0.2, n),
        "yaw": rng.uniform(-0.3, 0.3, n),
        "pitch": rng.uniform(-0.2, 0.2, n),
    }
    base.update(cols)  # type: ignore[arg-type]
    return pd.DataFrame(base)


def test_never_holdout_never_excluded_and_within_budget() -> None:
    frame = _frame(200, split=["holdout" if i % 3 == 0 else "pool" for i in range(200)])
    exclude = {f"s{i:04d}" for i in range(1, 200, 5)}
    picked = select_for_review(frame, budget=40, exclude=exclude)
    assert len(picked) == 40 and len(set(picked)) == 40
    split = frame.set_index("sample_id")["split"]
    assert all(split[s] != "holdout" for s in picked)
    assert not set(picked) & exclude


def test_without_pose_it_is_plain_worst_first() -> None:
    frame = _frame(50).drop(columns=["yaw", "pitch"])
    picked = select_for_review(frame, budget=10)
    assert picked == list(frame.sort_values("predicted_nme", ascending=False)["sample_id"][:10])


def test_spreads_over_poses_instead_of_fifty_copies_of_one_profile() -> None:
    n = 120
    profile = np.arange(n) < 60  # 60 profile faces, all worse than the 60 frontal ones
    frame = _frame(
        n,
        predicted_nme=np.where(profile, 0.30, 0.20) + np.linspace(0, 0.01, n),
        yaw=np.where(profile, 0.8, 0.0),
        pitch=np.zeros(n),
    )
    picked = select_for_review(frame, budget=20)
    chosen = frame.set_index("sample_id").loc[picked]
    assert 5 <= (chosen["yaw"] > 0.5).sum() <= 15, "both pose bins must be represented"
    assert picked[0] in set(frame["sample_id"][profile])  # the bin holding the worst face goes first
    # Inside each bin the worst faces are taken first.
    prof = chosen[chosen["yaw"] > 0.5]["predicted_nme"].to_numpy()
    assert np.all(np.diff(prof) <= 0)


def test_everything_picked_is_among_the_worst_pool() -> None:
    frame = _frame(300, seed=3)
    picked = select_for_review(frame, budget=10, pool_factor=3)
    worst30 = set(frame.sort_values("predicted_nme", ascending=False)["sample_id"][:30])
    assert set(picked) <= worst30


def test_face_confidence_fallback_nan_is_worst_and_one_row_per_sample() -> None:
    frame = pd.DataFrame(
        {
            "sample_id": ["a", "a", "b", "c", "d"],
            "split": ["pool"] * 5,
            "face_confidence": [0.9, 0.1, 0.5, np.nan, 0.95],
        }
    )
    assert select_for_review(frame, budget=3) == ["c", "a", "b"]
    with pytest.raises(ValueError, match="split"):
        select_for_review(frame.drop(columns=["split"]), budget=1)
    with pytest.raises(ValueError, match="predicted_nme"):
        select_for_review(frame.drop(columns=["face_confidence"]), budget=1)
    assert select_for_review(frame, budget=0) == []


def _mean_face(scheme=S300) -> np.ndarray:
    return scheme.meanface_array * 200 + 50


def test_pose_zero_on_mean_face_and_flips_sign_when_mirrored() -> None:
    mf = _mean_face()
    assert np.allclose(pose_descriptor(mf[None], S300), 0, atol=5e-3)  # the mean face is nearly symmetric
    face = mf.copy()
    mid = [i for i in range(68) if S300.flip[i] == i]
    face[mid, 0] += 12.0  # midline landmarks shift sideways: the head turned
    face[mid, 1] += 6.0  # and down
    yaw, pitch = pose_descriptor(face[None], S300)[0]
    assert yaw > 0.02 and pitch > 0.02
    mirrored = face.copy()
    mirrored[:, 0] = 400 - mirrored[:, 0]
    mirrored = mirrored[list(S300.flip)]
    yaw_m, pitch_m = pose_descriptor(mirrored[None], S300)[0]
    assert yaw_m == pytest.approx(-yaw, abs=1e-5) and pitch_m == pytest.approx(pitch, abs=1e-5)


@settings(max_examples=40)
@given(
    angle=st.floats(-1.2, 1.2),
    scale=st.floats(0.2, 5.0),
    dx=st.floats(-500, 500),
    dy=st.floats(-500, 500),
    turn=st.floats(-15, 15),
)
def test_pose_is_invariant_to_roll_scale_and_translation(angle, scale, dx, dy, turn) -> None:
    face = _mean_face()
    mid = [i for i in range(68) if S300.flip[i] == i]
    face[mid, 0] += turn
    c, s = np.cos(angle), np.sin(angle)
    moved = (face - 150) @ np.array([[c, s], [-s, c]]) * scale + [dx, dy]
    np.testing.assert_allclose(pose_descriptor(moved[None], S300), pose_descriptor(face[None], S300), atol=1e-4)


def test_pose_without_flip_is_zero_and_without_midline_still_works() -> None:
    no_flip = scheme_from_dict({"name": "x", "num_landmarks": 5, "flip": None})
    assert np.all(pose_descriptor(np.random.default_rng(0).normal(size=(3, 5, 2)), no_flip) == 0)
    # Four landmarks in two mirrored pairs, no midline landmark: a wide pair and a narrow one.
    pairs_only = scheme_from_dict({"name": "p", "num_landmarks": 4, "flip": [3, 2, 1, 0]})
    front = np.array([[[0.0, 0.0], [4.0, 1.0], [6.0, 1.0], [10.0, 0.0]]])
    turned = front.copy()
    turned[0, 1:3, 0] += 1.5  # the narrow (nearer) pair shifts more than the wide one
    assert abs(pose_descriptor(front, pairs_only)[0, 0]) < 1e-6
    assert pose_descriptor(turned, pairs_only)[0, 0] > 0.1
    with pytest.raises(ValueError, match="shape"):
        pose_descriptor(np.zeros((2, 3, 2)), pairs_only)
