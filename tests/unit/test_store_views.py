"""Store views: the current training label, holdout, pool, review, pseudo-labels and lineage; the holdout
guard; and the vectorised choices behind them against brute-force references (annotations/views.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from annotations.store import HoldoutLeak, Store
from annotations.store.views import LabelView, choose_current, gather_fixed, latest_per_group
from pipnet_core.schemes import scheme_from_dict

N = 4
TINY = scheme_from_dict({"name": "tiny4", "num_landmarks": N})
T0 = pd.Timestamp("2030-01-01", tz="UTC")


def _samples(ids: list[str], split: str) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({"sample_id": ids, "image_uri": ids, "width": 100, "height": 100,
                         "box": [[0.0, 0.0, 50.0, 50.0]] * n, "split": split, "dataset": "v"})  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store.create(tmp_path / "store", TINY)
    s.add_samples(_samples(["a", "b", "c", "d"], "train"))
    s.add_samples(_samples(["p", "q", "r"], "pool"))
    s.add_samples(_samples(["h", "k"], "holdout"))
    return s


def add(store: Store, sample: str, source: str, round_: int, value: float, minutes: int = 0, **cols) -> str:
    """One label whose landmarks are all ``value`` (so a view row shows which label it is)."""
    rows = pd.DataFrame({"sample_id": [sample], "source": source, "round": round_,
                         "created_at": T0 + pd.Timedelta(minutes=minutes), **cols})  # fmt: skip
    lm = np.full((1, N, 2), value, np.float32)
    conf = np.full((1, N), value / 100, np.float32) if source == "pseudo" else None
    return store.add_labels(rows, lm, landmark_confidence=conf)[0]


def values(view: LabelView) -> dict[str, float]:
    return {s: float(v[0, 0]) for s, v in zip(view.frame["sample_id"], view.landmarks, strict=True)}


def test_current_label_prefers_human_then_corrected_then_pseudo_then_newest_round(store: Store) -> None:
    add(store, "a", "pseudo", 3, 1.0, model_version="m3")
    add(store, "a", "human", 0, 2.0)  # human wins over a newer-round pseudo-label
    add(store, "b", "pseudo", 1, 3.0, model_version="m1")
    add(store, "b", "corrected", 1, 4.0, parent_label_id="x")
    add(store, "b", "pseudo", 2, 5.0, model_version="m2")  # corrected wins over a newer pseudo
    add(store, "c", "pseudo", 1, 6.0, model_version="m1")
    add(store, "c", "pseudo", 2, 7.0, model_version="m2")  # newest round wins
    add(store, "p", "pseudo", 2, 8.0, minutes=5, model_version="x")
    add(store, "p", "pseudo", 2, 9.0, minutes=1, model_version="y")  # same round: newest created_at wins
    add(store, "q", "human", 0, 10.0, annotator="u1")
    add(store, "q", "human", 0, 11.0, annotator="u2")  # identical keys: the later write wins
    view = store.current_labels()
    assert values(view) == {"a": 2.0, "b": 4.0, "c": 7.0, "p": 8.0, "q": 11.0}
    assert view.frame["sample_id"].is_unique and list(view.frame["split"].unique()) == ["train", "pool"]
    assert set(values(store.current_labels(splits=("pool",)))) == {"p", "q"}


def test_training_view_drops_samples_routed_to_review(store: Store) -> None:
    add(store, "p", "pseudo", 1, 1.0, level="std", model_version="m1")
    add(store, "p", "pseudo", 2, 2.0, level="review", model_version="m2")
    add(store, "q", "pseudo", 2, 3.0, level="cls2", model_version="m2")
    assert values(store.current_labels()) == {"q": 3.0}  # p's chosen label is "review": out, no fallback
    assert values(store.current_labels(for_training=False)) == {"p": 2.0, "q": 3.0}
    add(store, "p", "corrected", 2, 4.0, parent_label_id="x")
    assert values(store.current_labels()) == {"p": 4.0, "q": 3.0}


def test_holdout_view_and_pool_and_pseudo_labels(store: Store) -> None:
    add(store, "h", "human", 0, 1.0)
    add(store, "h", "human", 1, 2.0)
    add(store, "a", "human", 0, 3.0)
    add(store, "p", "human", 0, 4.0)
    add(store, "q", "pseudo", 1, 5.0, model_version="m1", face_confidence=0.9)
    add(store, "r", "pseudo", 2, 6.0, model_version="m2")
    hold = store.holdout()
    assert values(hold) == {"h": 2.0} and list(hold.frame["split"]) == ["holdout"]
    assert list(store.pool_unlabeled()["sample_id"]) == ["q", "r"]
    pseudo = store.pseudo_labels(1)
    assert values(pseudo) == {"q": 5.0}
    assert pseudo.frame["face_confidence"].tolist() == [pytest.approx(0.9)]
    np.testing.assert_allclose(pseudo.landmark_confidence, np.full((1, N), 0.05))
    assert len(store.pseudo_labels(7)) == 0 and store.pseudo_labels(7).landmarks.shape == (0, N, 2)
    assert values(store.current_labels(splits=("train", "pool", "holdout"))) == {
        "h": 2.0, "a": 3.0, "p": 4.0, "q": 5.0, "r": 6.0}  # fmt: skip


def test_holdout_never_leaks_into_pseudo_labels_review_or_training(store: Store) -> None:
    """The store-level guarantee of docs/store.md section 6 for holdout samples h and k."""
    add(store, "h", "human", 0, 1.0)
    # pseudo-labelling refuses them
    with pytest.raises(HoldoutLeak):
        add(store, "h", "pseudo", 1, 2.0, model_version="m1")
    with pytest.raises(HoldoutLeak):
        add(store, "k", "corrected", 1, 2.0)
    # review selection: never candidates, never pushed
    assert not {"h", "k"} & set(store.pool_unlabeled()["sample_id"])
    with pytest.raises(HoldoutLeak):
        store.add_reviews(pd.DataFrame({"sample_id": ["k"], "round": 1, "status": "pushed"}))
    store.add_reviews(pd.DataFrame({"sample_id": ["p"], "round": 1, "status": "pushed"}))
    assert list(store.in_review()["sample_id"]) == ["p"]
    # training never sees them
    add(store, "a", "human", 0, 3.0)
    for for_training in (True, False):
        assert "h" not in values(store.current_labels(for_training=for_training))
    assert "h" not in set(store.current_labels(splits=("train",)).frame["sample_id"])
    assert len(store.labels(source="pseudo")) == 0


def test_lineage_lists_every_label_oldest_first_with_provenance(store: Store) -> None:
    pseudo = add(store, "p", "pseudo", 1, 1.0, minutes=10, model_version="m1", level="cls2")
    add(store, "q", "pseudo", 1, 9.0, minutes=10, model_version="m1")
    add(store, "p", "corrected", 1, 2.0, minutes=20, parent_label_id=pseudo, annotator="ann", ls_task_id=7)
    add(store, "p", "pseudo", 2, 3.0, minutes=30, model_version="m2")
    add(store, "p", "human", 0, 0.5, minutes=0, annotator="old")
    lin = store.lineage("p")
    assert [float(v[0, 0]) for v in lin.landmarks] == [0.5, 1.0, 2.0, 3.0]
    f = lin.frame
    assert list(f["source"]) == ["human", "pseudo", "corrected", "pseudo"]
    assert f.loc[2, "parent_label_id"] == pseudo and f.loc[2, "annotator"] == "ann" and f.loc[2, "ls_task_id"] == 7
    assert list(f["model_version"].fillna("")) == ["", "m1", "", "m2"]
    assert len(store.lineage("nobody")) == 0


def test_views_read_across_many_parts_in_write_order(store: Store) -> None:
    ids = ["a", "b", "c", "d", "p", "q", "r"]
    for k in range(3):  # 3 rounds x 7 single-row parts
        for i, s in enumerate(ids):
            add(store, s, "pseudo", k, 100 * k + i, model_version=f"m{k}")
    allv = store.labels()
    assert len(allv) == 21
    np.testing.assert_array_equal(allv.landmarks[:, 0, 0], [100 * k + i for k in range(3) for i in range(7)])
    assert values(store.current_labels()) == {s: 200.0 + i for i, s in enumerate(ids)}
    sub = allv.take(np.array([20, 0]))
    assert list(sub.frame["sample_id"]) == ["r", "a"] and sub.landmarks[0, 0, 0] == 206.0


def test_label_view_without_confidences_says_none(store: Store) -> None:
    add(store, "a", "human", 0, 1.0)
    view = store.current_labels()
    assert view.landmark_confidence is None and view.moved is None and len(view) == 1


# ------------------------------------------------------------------ vectorised choices
def _reference_current(frame: pd.DataFrame) -> list[int]:
    ranked = (
        frame[frame.keep]
        .assign(pos=lambda f: f.index)
        .sort_values(["sample", "priority", "round", "created", "pos"], ascending=[True, True, False, False, False])
    )
    return sorted(ranked.groupby("sample").head(1)["pos"].tolist())


rows_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3), st.integers(0, 3), st.booleans()),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_choose_current_matches_a_brute_force_sort(rows: list[tuple[int, int, int, int, bool]]) -> None:
    frame = pd.DataFrame(rows, columns=["sample", "priority", "round", "created", "keep"]).astype(
        {"sample": np.int64, "priority": np.int8, "round": np.int32, "created": np.int64, "keep": bool}
    )
    got = choose_current(
        frame["sample"].to_numpy(), frame["priority"].to_numpy(), frame["round"].to_numpy(),
        frame["created"].to_numpy(), frame["keep"].to_numpy(),
    )  # fmt: skip
    assert got.tolist() == _reference_current(frame)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), max_size=40))
def test_latest_per_group_matches_a_brute_force_sort(rows: list[tuple[int, int]]) -> None:
    group = np.array([g for g, _ in rows], np.int64)
    time = np.array([t for _, t in rows], np.int64)
    expect = sorted(
        max(range(len(rows)), key=lambda i: (time[i], i) if group[i] == g else (-1, -1)) for g in set(group.tolist())
    )
    assert latest_per_group(group, time).tolist() == expect


def test_gather_fixed_handles_chunks_slices_and_nulls() -> None:
    data = np.arange(10 * N * 2, dtype=np.float32).reshape(10, N, 2)
    inner = pa.list_(pa.field("item", pa.float32(), nullable=False), 2)
    outer = pa.list_(pa.field("item", inner, nullable=False), N)
    arr = pa.FixedSizeListArray.from_arrays(
        pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), type=inner), type=outer
    )
    col = pa.chunked_array([arr.slice(0, 3), arr.slice(3, 4), arr.slice(7)])
    np.testing.assert_array_equal(gather_fixed(col, None, (N, 2), np.float32, np.nan), data)
    rows = np.array([1, 2, 3, 5, 9])
    np.testing.assert_array_equal(gather_fixed(col, rows, (N, 2), np.float32, np.nan), data[rows])
    conf = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(3 * N, dtype=np.float32)), N)
    with_null = pa.array([conf[0].as_py(), None, conf[2].as_py()], type=conf.type)
    got = gather_fixed(with_null, np.array([0, 1, 2]), (N,), np.float32, np.nan)
    assert np.isnan(got[1]).all() and got[2, 0] == 2 * N
