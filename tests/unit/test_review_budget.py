"""One review budget per round, the audit slice, and faces people skipped or rejected
(annotations/review/candidates.py).

What Label Studio does is written into the store as a pull writes it (tests/unit/review_store.py);
tests/integration/test_review_rounds_labelstudio.py runs the same rules against a real server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from annotations.review.audit import audit_keys, draw_audit, read_audit
from annotations.review.candidates import faces_sent, plan_round_review, round_candidates
from annotations.review.policy import ReviewPolicy
from annotations.review.push import SETTING_PENDING
from annotations.store.exclusions import latest_review_status, rejected_samples, waiting_skipped
from annotations.store.shards import plan_pool_shards
from annotations.store.training import training_set
from tests.unit.review_store import add_pseudo, events, make_pool_store, pool_ids

POLICY = ReviewPolicy(budget=0.2, audit_share=0.2, audit_min=2, seed=3)


def _store(tmp_path: Path, n: int = 50):  # type: ignore[no-untyped-def]
    store = make_pool_store(tmp_path, n)
    add_pseudo(store, 1, pool_ids(n), np.linspace(0.01, 0.30, n))  # p0049 is the least sure face
    return store


def test_a_round_sends_its_budget_once_and_a_raised_budget_sends_the_difference(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = plan_round_review(store, 1, POLICY)
    assert (first.budget, first.sent, len(first.audit), len(first.selected)) == (10, 0, 2, 8)
    assert len(set(first.sample_ids)) == 10
    events(store, first.sample_ids, 1, "pushed")  # what a push records
    assert faces_sent(store, 1) == set(first.sample_ids)

    again = plan_round_review(store, 1, POLICY)
    assert again.sample_ids == [] and again.sent == 10 and again.budget == 10

    raised = plan_round_review(store, 1, ReviewPolicy(budget=0.4, audit_share=0.2, audit_min=2, seed=3))
    assert raised.budget == 20 and raised.sent == 10 and len(raised.sample_ids) == 10
    assert not set(raised.sample_ids) & set(first.sample_ids)
    assert len(raised.audit) == 2  # ceil(0.2 * 20) = 4 audit faces in all, 2 drawn before
    assert read_audit(store, 1)["sample_ids"] == first.audit + raised.audit

    # Another round has a budget of its own.
    add_pseudo(store, 2, pool_ids(50), np.linspace(0.01, 0.30, 50))
    assert plan_round_review(store, 2, POLICY).budget == 10 and plan_round_review(store, 2, POLICY).sent == 0


def test_faces_held_back_by_an_outage_count_against_the_budget(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set_setting(SETTING_PENDING, [{"sample_id": s, "round": 1, "label_id": "x"} for s in pool_ids(4)])
    plan = plan_round_review(store, 1, POLICY)
    assert plan.sent == 4 and len(plan.sample_ids) == 6 and not set(plan.sample_ids) & set(pool_ids(4))


def test_the_audit_is_a_seeded_random_draw_not_the_least_sure_faces(tmp_path: Path) -> None:
    store = _store(tmp_path, n=200)
    policy = ReviewPolicy(budget=0.25, audit_share=0.5, audit_min=20, seed=11)
    plan = plan_round_review(store, 1, policy)
    assert len(plan.audit) == 25 and len(plan.selected) == 25
    rank = {sid: i for i, sid in enumerate(pool_ids(200))}  # rank = how unsure the model is
    assert min(rank[s] for s in plan.selected) >= 150  # the uncertainty part: all among the least sure quarter
    assert 50 < np.mean([rank[s] for s in plan.audit]) < 150  # the audit: spread over the whole pool
    assert len({rank[s] // 50 for s in plan.audit}) == 4
    record = read_audit(store, 1)
    assert record["seed"] == 11 and record["eligible"] == 200 and record["p"] == pytest.approx(25 / 200)
    assert record["sample_ids"] == plan.audit
    # The draw is the bottom-k of the seeded keys: reproducible, and another seed draws other faces.
    assert draw_audit(pool_ids(200), 25, 11, 1) == plan.audit
    assert set(draw_audit(pool_ids(200), 25, 12, 1)) != set(plan.audit)
    keys = audit_keys(pool_ids(200), 11, 1)
    assert ((keys >= 0) & (keys < 1)).all() and len(set(keys.tolist())) == 200
    # Asking again before anything was sent (a push that died, an import file) gives the same slice.
    assert plan_round_review(store, 1, policy).audit == plan.audit


def test_small_budget_the_audit_takes_at_least_its_minimum(tmp_path: Path) -> None:
    store = _store(tmp_path, n=500)
    plan = plan_round_review(store, 1, ReviewPolicy(budget=0.05, audit_share=0.2, audit_min=20))
    assert (plan.budget, len(plan.audit), len(plan.selected)) == (25, 20, 5)
    off = make_pool_store(tmp_path / "off", 40)
    add_pseudo(off, 1, pool_ids(40), np.linspace(0.01, 0.3, 40))
    assert plan_round_review(off, 1, ReviewPolicy(budget=0.25, audit_share=0.0)).audit == []
    none = plan_round_review(off, 1, ReviewPolicy(budget=0.0))  # a budget of 0: no review this round
    assert none.budget == 0 and none.sample_ids == []


def test_rejected_faces_leave_the_pool_skipped_ones_come_back_after_the_configured_rounds(tmp_path: Path) -> None:
    store = _store(tmp_path)
    worst = pool_ids(50)[::-1]  # least sure first
    rejected, skipped = worst[0], worst[1]
    events(store, [rejected, skipped], 1, "pushed")
    events(store, [rejected], 1, "rejected", offset_s=1)
    events(store, [skipped], 1, "skipped", offset_s=1)
    assert rejected_samples(store) == {rejected}
    assert waiting_skipped(store, 2, 2) == {skipped} and waiting_skipped(store, 3, 2) == set()
    assert waiting_skipped(store, 9, None) == {skipped}

    # Not pseudo-labeled again, not trained on; the skipped face still is.
    assert rejected not in set(sum((store.read_round_json(2, s) for s in plan_pool_shards(store, 2, 16)), []))
    assert skipped in set(sum((store.read_round_json(2, s) for s in plan_pool_shards(store, 2, 16)), []))
    trained = set(training_set(store, 2).sample_ids)
    assert rejected not in trained and skipped in trained and len(trained) == 3 + 49

    policy = ReviewPolicy(budget=0.1, audit_share=0.0, reselect_skipped_after=2)
    for k in (2, 3):
        add_pseudo(store, k, pool_ids(50), np.linspace(0.01, 0.30, 50))
    in_2 = plan_round_review(store, 2, policy)
    assert rejected not in in_2.sample_ids and skipped not in in_2.sample_ids and len(in_2.sample_ids) == 5
    in_3 = plan_round_review(store, 3, policy)
    assert in_3.sample_ids[0] == skipped and rejected not in in_3.sample_ids  # back, and the least sure face
    assert len(in_3.sample_ids) == 5  # it counts in round 3's budget like any other face
    never = ReviewPolicy(budget=0.1, audit_share=0.0, reselect_skipped_after=None)
    assert skipped not in plan_round_review(store, 3, never).sample_ids


def test_a_later_answer_wins_rejected_then_completed_is_back(tmp_path: Path) -> None:
    store = _store(tmp_path)
    sid = pool_ids(50)[-1]
    events(store, [sid], 1, "pushed")
    events(store, [sid], 1, "rejected", offset_s=1)
    assert sid in rejected_samples(store)
    events(store, [sid], 1, "completed", offset_s=2)
    assert sid not in rejected_samples(store)
    assert latest_review_status(store).set_index("sample_id").loc[sid, "status"] == "completed"


def test_holdout_human_and_in_review_faces_are_never_picked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    events(store, pool_ids(50)[-3:], 1, "pushed")
    ids = round_candidates(store, 1, 1.0, audit_share=0.5, audit_min=0)
    assert len(ids) == 47 and not set(ids) & set(pool_ids(50)[-3:])
    assert not any(s.startswith(("h", "t")) for s in ids)


def test_review_policy_refuses_settings_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="share of the pool"):
        ReviewPolicy(budget=-0.1)
    with pytest.raises(ValueError, match="audit_share"):
        ReviewPolicy(audit_share=1.5)
    with pytest.raises(ValueError, match="reselect_skipped_after"):
        ReviewPolicy(reselect_skipped_after=0)
    # A round's config refuses them when it is made, before anything trains.
    from flows.config import STCConfig

    with pytest.raises(ValueError, match=r"audit_share=1.5: must be a share"):
        STCConfig.from_dict({"audit_share": 1.5})
    with pytest.raises(ValueError, match="reselect_skipped_after=0"):
        STCConfig().replace(reselect_skipped_after=0)
    assert STCConfig().replace(reselect_skipped_after=None).review_policy().reselect_skipped_after is None

