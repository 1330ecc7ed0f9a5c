"""Target encoding and decoding: GT -> targets -> decode returns GT (docs/algorithm.md sections 2.7, 2.11, 7)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipnet_core.decode import coarse_agreement, decode
from pipnet_core.meanface import NeighbourTable, build_neighbour_table, neighbour_table_from_nb
from pipnet_core.schemes import BUILTIN_SCHEMES, get_scheme
from pipnet_core.targets import build_targets, encode_dense

TABLES: dict[str, NeighbourTable] = {n: build_neighbour_table(get_scheme(n).meanface_array) for n in BUILTIN_SCHEMES}


def _faces(name: str, batch: int, rng: np.random.Generator, jitter: float = 0.15) -> np.ndarray:
    """Mean face moved, scaled and jittered: (B, N, 2); some landmarks end up outside the crop."""
    mf = get_scheme(name).meanface_array
    shift = rng.uniform(-0.3, 0.3, size=(batch, 1, 2))
    scale = rng.uniform(0.7, 1.4, size=(batch, 1, 1))
    return (mf - 0.5) * scale + 0.5 + shift + jitter * rng.standard_normal((batch,) + mf.shape) * 0.1


def _decode_dense(maps: dict[str, np.ndarray], table: NeighbourTable, **kw: np.ndarray):
    return decode(maps["cls"], maps["x"], maps["y"], maps["nb_x"], maps["nb_y"], table, **kw)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(BUILTIN_SCHEMES),
    batch=st.integers(1, 4),
    grid=st.sampled_from([1, 2, 4, 7, 8, 16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_encode_decode_round_trip(name: str, batch: int, grid: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = _faces(name, batch, rng)
    table = TABLES[name]
    maps = encode_dense(gt, grid, table.nb, dtype=np.float64)
    out = _decode_dense(maps, table)
    np.testing.assert_allclose(out.own, gt, atol=1e-9)
    np.testing.assert_allclose(out.landmarks, gt, atol=1e-9)
    np.testing.assert_allclose(out.vote_spread, 0.0, atol=1e-9)
    # float32 as the model would give them
    maps32 = encode_dense(gt, grid, table.nb)
    assert maps32["x"].dtype == np.float32
    out32 = _decode_dense(maps32, table)
    assert out32.landmarks.dtype == np.float32
    np.testing.assert_allclose(out32.landmarks, gt, atol=1e-5)


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_round_trip_with_landmarks_outside_the_crop(name: str) -> None:
    rng = np.random.default_rng(1)
    gt = _faces(name, 3, rng)
    gt[0, :5] += np.array([-0.4, 0.0])  # left of the crop
    gt[1, -3:] += np.array([0.0, 0.6])  # below it
    gt[2] = gt[2] * 1.8 - 0.4  # spills on all sides
    assert (gt < 0).any() and (gt > 1).any()
    maps = encode_dense(gt, 8, TABLES[name].nb, dtype=np.float64)
    out = _decode_dense(maps, TABLES[name])
    np.testing.assert_allclose(out.own, gt, atol=1e-9)
    np.testing.assert_allclose(out.landmarks, gt, atol=1e-9)
    t = build_targets(gt, ["std"] * 3, TABLES[name].nb, 8)
    assert (t.x[0, :5] < 0).any()  # offsets outside [0, 1) where the cell was clamped


def test_dense_maps_follow_the_spec_by_hand() -> None:
    nb = np.array([[1], [0]])
    lm = np.array([[[0.30, 0.90], [0.55, 0.10]]])
    maps = encode_dense(lm, 4, nb, dtype=np.float64)
    # landmark 0: x*S = 1.2 -> mx 1, offset 0.2; y*S = 3.6 -> my 3, offset 0.6
    assert maps["cls"][0, 0, 3, 1] == 1 and maps["cls"][0, 0].sum() == 1
    assert maps["x"][0, 0, 3, 1] == pytest.approx(0.2)
    assert maps["y"][0, 0, 3, 1] == pytest.approx(0.6)
    # its neighbour (landmark 1 at 2.2, 0.4 in grid units) from cell (1, 3)
    assert maps["nb_x"][0, 0, 3, 1] == pytest.approx(1.2)
    assert maps["nb_y"][0, 0, 3, 1] == pytest.approx(-2.6)
    assert np.count_nonzero(maps["x"]) == 2 and np.count_nonzero(maps["nb_y"]) == 2


def test_neighbour_channel_layout_is_i_times_c_plus_j() -> None:
    table = TABLES["aflw"]
    gt = _faces("aflw", 2, np.random.default_rng(3))
    maps = encode_dense(gt, 8, table.nb, dtype=np.float64)
    t = build_targets(gt, ["std", "std"], table.nb, 8, dtype=np.float64)
    c = table.num_nb
    for i in (0, 7, 18):
        for j in (0, 9):
            cell = t.cell[1, i]
            assert maps["nb_x"][1, i * c + j].ravel()[cell] == pytest.approx(gt[1, table.nb[i, j], 0] * 8 - cell % 8)
            assert t.nb_x[1, i, j] == maps["nb_x"][1, i * c + j].ravel()[cell]


def test_build_targets_levels_and_coarse_maps() -> None:
    table = TABLES["300w"]
    gt = _faces("300w", 3, np.random.default_rng(2))
    t = build_targets(gt, ["std", "cls2", "cls3"], table.nb, 8)
    assert t.cls1.shape == (3, 68, 8, 8) and t.cls2.shape == (3, 68, 4, 4) and t.cls3.shape == (3, 68, 2, 2)
    np.testing.assert_array_equal(t.mask_cls, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(t.mask_reg, [1, 0, 0])
    for maps, s in ((t.cls1, 8), (t.cls2, 4), (t.cls3, 2)):
        assert (maps.reshape(3, 68, -1).sum(-1) == 1).all()
        # the rule of docs/algorithm.md section 4.2 at S = 4 and 2: clamp(floor(x * S))
        cells = np.clip(np.floor(gt * s), 0, s - 1).astype(int)
        idx = maps.reshape(3, 68, -1).argmax(-1)
        np.testing.assert_array_equal(idx, cells[..., 1] * s + cells[..., 0])
    dense = encode_dense(gt, 8, table.nb)
    np.testing.assert_array_equal(t.cls1, dense["cls"])
    assert t.cell.dtype == np.int64 and t.x.dtype == np.float32


def test_unknown_level_is_named() -> None:
    with pytest.raises(ValueError, match="'cls9'"):
        build_targets(np.zeros((2, 19, 2)), ["std", "cls9"], TABLES["aflw"].nb, 8)
    with pytest.raises(ValueError, match="one level per sample"):
        build_targets(np.zeros((2, 19, 2)), ["std"], TABLES["aflw"].nb, 8)
    with pytest.raises(ValueError, match="cls3"):
        build_targets(np.zeros((1, 19, 2)), ["cls3"], TABLES["aflw"].nb, 2)


def test_missing_landmarks_are_masked() -> None:
    table = TABLES["aflw"]
    gt = _faces("aflw", 2, np.random.default_rng(4))
    gt[0, 5] = np.nan
    t = build_targets(gt, ["std", "std"], table.nb, 8)
    assert t.valid[0, 5] == 0 and t.valid.sum() == 2 * 19 - 1
    assert t.cls1[0, 5].sum() == 0 and t.cls2[0, 5].sum() == 0 and t.cls3[0, 5].sum() == 0
    assert t.x[0, 5] == 0 and (t.nb_x[0, 5] == 0).all() and (t.nb_valid[0, 5] == 0).all()
    voters = np.argwhere(table.nb == 5)
    for i, j in voters:
        assert t.nb_valid[0, i, j] == 0 and t.nb_x[0, i, j] == 0
        assert t.nb_valid[1, i, j] == 1
    assert t.nb_valid[0].sum() == 19 * 10 - 10 - len(voters)
    assert np.isfinite(t.nb_x).all() and np.isfinite(t.x).all()


def test_merge_weighting_matches_the_official_formula() -> None:
    # 3 landmarks, C = 2, each the neighbour of both others: every landmark gets 2 votes (max_len 2),
    # so each merged landmark is (own + 2 votes) / 3 with random neighbour maps.
    nb = np.array([[1, 2], [0, 2], [0, 1]])
    table = neighbour_table_from_nb(nb)
    assert table.max_len == 2
    s = 4
    b, n, c = 1, 3, 2
    cls = np.zeros((b, n, s, s))
    cls[0, 0, 1, 2] = 5.0  # landmark 0 at cell (cx 2, cy 1)
    cls[0, 1, 3, 0] = 2.0
    cls[0, 2, 0, 3] = 1.0
    x = np.full((b, n, s, s), 0.5)
    y = np.full((b, n, s, s), 0.25)
    rng = np.random.default_rng(0)
    nb_x = rng.uniform(-2, 2, size=(b, c * n, s, s))
    nb_y = rng.uniform(-2, 2, size=(b, c * n, s, s))
    out = decode(cls, x, y, nb_x, nb_y, table)
    cells = {0: (2, 1), 1: (0, 3), 2: (3, 0)}
    own = {i: np.array([(cx + 0.5) / s, (cy + 0.25) / s]) for i, (cx, cy) in cells.items()}

    def vote(i: int, j: int) -> np.ndarray:
        cx, cy = cells[i]
        return np.array([(cx + nb_x[0, i * c + j, cy, cx]) / s, (cy + nb_y[0, i * c + j, cy, cx]) / s])

    # voters of k: pairs (i, j) with nb[i, j] == k in (i, j) order, cyclically padded to max_len = 2
    expected = {
        0: (own[0] + vote(1, 0) + vote(2, 0)) / 3,
        1: (own[1] + vote(0, 0) + vote(2, 1)) / 3,
        2: (own[2] + vote(0, 1) + vote(1, 1)) / 3,
    }
    for k in range(3):
        np.testing.assert_allclose(out.own[0, k], own[k], atol=1e-12)
        np.testing.assert_allclose(out.landmarks[0, k], expected[k], atol=1e-12)
    np.testing.assert_allclose(out.score_peak[0], [5.0, 2.0, 1.0])


def test_padded_votes_are_duplicated_and_own_weight_is_one_over_one_plus_max_len() -> None:
    # Landmark 0 gets 3 votes, landmark 1 only 1 (padded to 3 copies), 2 and 3 get 2.
    nb = np.array([[1, 2], [0, 3], [0, 3], [0, 2]])
    table = neighbour_table_from_nb(nb)
    assert table.max_len == 3
    s, n, c = 2, 4, 2
    cls = np.zeros((1, n, s, s))
    cls[..., 0, 0] = 1.0  # every landmark at cell (0, 0)
    own_x = np.array([0.1, 0.2, 0.3, 0.4])
    x = np.broadcast_to(own_x[None, :, None, None], (1, n, s, s)).copy()
    y = np.zeros((1, n, s, s))
    nb_x = np.zeros((1, c * n, s, s))
    nb_x[0, 0 * c + 0] = 0.9  # landmark 0's vote for landmark 1: its only vote
    nb_y = np.zeros((1, c * n, s, s))
    out = decode(cls, x, y, nb_x, nb_y, table)
    # landmark 1: own 0.1 (=0.2/2), three copies of the same vote 0.45: own weight 1/4
    assert out.landmarks[0, 1, 0] == pytest.approx((0.2 / s + 3 * 0.9 / s) / 4)
    assert out.votes.shape == (1, n, 3, 2)
    np.testing.assert_allclose(out.votes[0, 1, :, 0], 0.45)
    # vote spread: weighted RMS of the 4 estimates around the merge
    est = np.array([0.1, 0.45, 0.45, 0.45])
    assert out.vote_spread[0, 1] == pytest.approx(np.sqrt(((est - est.mean()) ** 2).mean()))


def test_argmax_uses_integer_division_for_the_row() -> None:
    table = neighbour_table_from_nb(np.array([[1], [0]]))
    s = 8
    cls = np.zeros((1, 2, s, s))
    cls[0, 0, 5, 7] = 1  # flat id 47: cx = 7, cy = 5 (true division would give 5.875)
    cls[0, 1, 6, 1] = 1
    z = np.zeros((1, 2, s, s))
    out = decode(cls, z, z, z, z, table)
    np.testing.assert_allclose(out.own[0, 0], [7 / 8, 5 / 8])


def test_coarse_agreement() -> None:
    table = TABLES["300w"]
    gt = _faces("300w", 2, np.random.default_rng(5), jitter=0.0)
    gt = np.clip(gt, 0.01, 0.99)
    t = build_targets(gt, ["std", "std"], table.nb, 8, dtype=np.float64)
    maps = encode_dense(gt, 8, table.nb, dtype=np.float64)
    out = _decode_dense(maps, table, cls2=t.cls2, cls3=t.cls3)
    np.testing.assert_allclose(out.coarse_agreement, 1.0)
    assert _decode_dense(maps, table).coarse_agreement is None
    # A coarse map that points elsewhere: far -> 0, just across a border -> near 1.
    lm = np.array([[[0.26, 0.10], [0.9, 0.9]]])
    c2 = np.zeros((1, 2, 4, 4))
    c2[0, 0, 0, 0] = 1  # cell [0, 0.25) x [0, 0.25): landmark 0 is 0.01 = 0.04 cells to its right
    c2[0, 1, 0, 0] = 1  # far away
    agree = coarse_agreement(lm, [c2])
    assert agree[0, 0] == pytest.approx(0.96)
    assert agree[0, 1] == 0.0
    c3 = np.zeros((1, 2, 2, 2))
    c3[0, :, 0, 0] = 1  # top-left quadrant: contains landmark 0; landmark 1 is 0.8 quadrants away per axis
    agree2 = coarse_agreement(lm, [c2, c3])
    assert agree2[0, 0] == pytest.approx((0.96 + 1.0) / 2)
    assert agree2[0, 1] == pytest.approx(max(0.0, 1 - np.hypot(0.8, 0.8)) / 2)


def test_decode_checks_shapes() -> None:
    table = TABLES["aflw"]
    z = np.zeros((1, 19, 8, 8))
    with pytest.raises(ValueError, match="nb_x"):
        decode(z, z, z, np.zeros((1, 19, 8, 8)), np.zeros((1, 190, 8, 8)), table)
    with pytest.raises(ValueError, match="19 landmarks"):
        decode(np.zeros((1, 68, 8, 8)), z, z, z, z, table)
