"""Mean face and neighbour table against the official values (docs/algorithm.md sections 2.5, 2.6 and 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipnet_core.meanface import (
    NeighbourError,
    build_neighbour_table,
    compute_meanface,
    neighbour_table_from_nb,
)
from pipnet_core.schemes import BUILTIN_SCHEMES, get_scheme

DATA = Path(__file__).resolve().parents[2] / "pipnet_core" / "data"


def test_300w_neighbours_match_the_spec() -> None:
    table = build_neighbour_table(get_scheme("300w").meanface_array)
    assert table.nb.shape == (68, 10)
    assert table.nb.dtype == np.int64
    assert table.nb[0].tolist() == [17, 1, 36, 18, 41, 37, 2, 19, 40, 38]
    assert table.nb[36].tolist() == [41, 37, 40, 38, 17, 18, 19, 39, 0, 20]


@pytest.mark.parametrize(
    ("name", "max_len", "min_len"), [("300w", 22, 4), ("wflw", 17, 3), ("cofw", 19, 6), ("aflw", 18, 3)]
)
def test_max_len_matches_the_spec(name: str, max_len: int, min_len: int) -> None:
    table = build_neighbour_table(get_scheme(name).meanface_array)
    assert table.max_len == max_len
    assert table.vote_counts.min() == min_len
    assert table.reverse_index1.shape == table.reverse_index2.shape == (table.num_landmarks * max_len,)
    assert table.num_nb == 10


def test_gssl_meanface_has_the_same_max_len() -> None:
    mf = np.array((DATA / "meanface_300w_gssl.txt").read_text().split(), dtype=np.float64).reshape(-1, 2)
    assert build_neighbour_table(mf).max_len == 22


@pytest.mark.parametrize("name", BUILTIN_SCHEMES)
def test_reverse_index_is_the_cyclically_padded_voter_list(name: str) -> None:
    table = build_neighbour_table(get_scheme(name).meanface_array)
    n, c, m = table.num_landmarks, table.num_nb, table.max_len
    r1 = table.reverse_index1.reshape(n, m)
    r2 = table.reverse_index2.reshape(n, m)
    for k in range(n):
        pairs = [(i, j) for i in range(n) for j in range(c) if table.nb[i, j] == k]
        expected = [pairs[t % len(pairs)] for t in range(m)]
        assert list(zip(r1[k].tolist(), r2[k].tolist(), strict=True)) == expected
        assert (table.nb[r1[k], r2[k]] == k).all()


@pytest.mark.parametrize(("name", "bound"), [("300w", 0.01), ("wflw", 0.01), ("aflw", 0.01), ("cofw", 0.03)])
def test_flip_tables_are_involutions_and_mirror_the_meanface(name: str, bound: float) -> None:
    scheme = get_scheme(name)
    flip = np.asarray(scheme.flip)
    assert (flip[flip] == np.arange(scheme.num_landmarks)).all()
    mf = scheme.meanface_array
    mirrored = mf[flip].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    diff = np.abs(mirrored - mf).mean()
    assert diff < bound
    if name == "cofw":
        assert diff > 0.01  # docs/algorithm.md section 7: "about 0.02": the COFW mean face is less symmetric


def test_compute_meanface_ignores_missing_landmarks() -> None:
    lm = np.array([[[0.2, 0.4], [0.6, 0.5], [np.nan, np.nan]], [[0.4, 0.6], [0.8, 0.7], [0.5, 0.9]]], dtype=np.float32)
    mf = compute_meanface(lm)
    np.testing.assert_allclose(mf, [[0.3, 0.5], [0.7, 0.6], [0.5, 0.9]], atol=1e-7)
    assert mf.dtype == np.float64


def test_compute_meanface_refuses_a_landmark_missing_everywhere() -> None:
    lm = np.zeros((3, 4, 2))
    lm[:, 2] = np.nan
    with pytest.raises(ValueError, match=r"\[2\]"):
        compute_meanface(lm)


def test_refuses_num_nb_not_below_n() -> None:
    mf = get_scheme("aflw").meanface_array
    with pytest.raises(NeighbourError, match="1..18"):
        build_neighbour_table(mf, num_nb=19)
    with pytest.raises(NeighbourError):
        build_neighbour_table(mf, num_nb=0)
    assert build_neighbour_table(mf, num_nb=18).num_nb == 18


def test_refuses_a_landmark_that_is_nobodys_neighbour() -> None:
    rng = np.random.default_rng(0)
    cluster = 0.5 + 0.01 * rng.standard_normal((6, 2))
    mf = np.vstack([cluster, [[0.95, 0.05]]])  # the far landmark 6 is never among the 2 nearest
    with pytest.raises(NeighbourError, match=r"\[6\].*larger number of neighbours"):
        build_neighbour_table(mf, num_nb=2)


def test_refuses_votes_too_uneven_to_pad() -> None:
    # Landmark 0 gets 12 votes; landmarks 3..12 get 1: eleven copies of 1 cannot fill 12 slots.
    n = 13
    nb = np.array([[1, 2]] + [[0, i % (n - 1) + 1] for i in range(1, n)])
    with pytest.raises(NeighbourError, match="smaller number of neighbours"):
        neighbour_table_from_nb(nb)


def test_refuses_self_neighbour_and_out_of_range() -> None:
    with pytest.raises(NeighbourError, match="own neighbour"):
        neighbour_table_from_nb(np.array([[0], [0]]))
    with pytest.raises(NeighbourError, match="outside"):
        neighbour_table_from_nb(np.array([[1], [2]]))


def test_table_from_nb_reproduces_build() -> None:
    built = build_neighbour_table(get_scheme("wflw").meanface_array)
    again = neighbour_table_from_nb(built.nb)
    assert again.max_len == built.max_len
    assert (again.reverse_index1 == built.reverse_index1).all()
    assert (again.reverse_index2 == built.reverse_index2).all()
