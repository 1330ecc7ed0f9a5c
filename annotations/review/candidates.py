"""The faces of a round that people should see: one budget per round, an audit slice, the least sure first.

The budget is a share of the whole pool, so it does not shrink as people correct faces, and it is
the round's, not one push's: faces already sent in round k (a ``pushed`` review event of round k, or
held back by an outage in ``labelstudio.pending_push``) count against it, so pushing again sends
nothing new until the budget is raised, and then only the difference.

Of the budget, the audit slice (:mod:`~annotations.review.audit`) is drawn at random from the
eligible faces first; the rest goes to the least sure faces, spread over poses
(:func:`~.selection.select_for_review`). Eligible: round k's pseudo-labelled pool faces that no person
labeled or corrected, not with reviewers now, not rejected ("no face", "bad image"), and not skipped
less than ``reselect_skipped_after`` rounds ago (:mod:`annotations.store.exclusions`). Holdout faces
never. The rules in full: docs/review.md section 11.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from annotations.review.audit import audit_size, draw_audit, read_audit, record_audit
from annotations.review.policy import ReviewPolicy
from annotations.review.push import SETTING_PENDING
from annotations.review.selection import pose_descriptor, select_for_review
from annotations.store.exclusions import rejected_samples, waiting_skipped
from annotations.store.store import Store

__all__ = [
    "ReviewPlan",
    "ReviewPolicy",
    "faces_sent",
    "plan_round_review",
    "review_budget",
    "review_exclusions",
    "round_candidates",
]


@dataclass
class ReviewPlan:
    """What round k sends now.

    Attributes:
        round: The round.
        budget: Faces the round may send in all.
        sent: Faces the round had sent (or held pending) before this plan.
        audit: Audit faces to send now (random), in draw order.
        selected: Least confident faces to send now, in pick order.
        eligible: Faces that could have been chosen.
    """

    round: int
    budget: int
    sent: int = 0
    audit: list[str] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)
    eligible: int = 0

    @property
    def sample_ids(self) -> list[str]:
        """Everything to send now: the audit slice first, then the least confident faces."""
        return self.audit + self.selected


def review_budget(store: Store, share: float) -> int:
    """Faces per round for a budget of ``share`` of the pool (at least one; none for a share of 0)."""
    if share <= 0:
        return 0
    return max(1, int(round(share * len(store.samples(split="pool")))))


def faces_sent(store: Store, k: int) -> set[str]:
    """Faces round k has sent to people: a ``pushed`` event of round k, or pending after an outage."""
    events = store.reviews(latest=False)
    sent = set()
    if not events.empty:
        mine = (events["round"].astype(int) == int(k)) & (events["status"] == "pushed")
        sent = set(events.loc[mine, "sample_id"].astype(str))
    pending = store.get_setting(SETTING_PENDING) or []
    return sent | {str(p["sample_id"]) for p in pending if int(p.get("round", -1)) == int(k)}


def review_exclusions(store: Store, k: int, reselect_skipped_after: int | None) -> set[str]:
    """Faces round k may not select: with reviewers now, labeled or corrected by people, rejected, or
    skipped too recently."""
    exclude = set(store.in_review()["sample_id"])
    exclude |= set(store.labels(source="human").frame["sample_id"])
    exclude |= set(store.labels(source="corrected").frame["sample_id"])
    exclude |= rejected_samples(store)
    return exclude | waiting_skipped(store, k, reselect_skipped_after)


def plan_round_review(store: Store, k: int, policy: ReviewPolicy) -> ReviewPlan:
    """The faces round k sends now within what is left of its budget; records the audit draw.

    An audit face drawn earlier but not sent (a push that died, or an import file that was never
    imported) is sent first, so a rerun sends the same slice.
    """
    budget = review_budget(store, policy.budget)
    sent = faces_sent(store, k)
    plan = ReviewPlan(round=int(k), budget=budget, sent=len(sent))
    room = budget - len(sent)
    view = store.pseudo_labels(k)
    if room <= 0 or len(view) == 0:
        return plan
    frame = view.frame.reset_index(drop=True).copy()
    pose = pose_descriptor(view.landmarks, store.scheme)
    frame["yaw"], frame["pitch"] = pose[:, 0], pose[:, 1]
    frame["split"] = store.samples().set_index("sample_id").loc[frame["sample_id"], "split"].to_numpy()
    exclude = review_exclusions(store, k, policy.reselect_skipped_after) | sent
    eligible = set(frame.loc[frame["split"] == "pool", "sample_id"].astype(str)) - exclude
    plan.eligible = len(eligible)

    record = read_audit(store, k) or {"sample_ids": [], "eligible": len(eligible) + len(sent)}
    drawn = list(record["sample_ids"])
    unsent = [s for s in drawn if s in eligible]
    target = audit_size(budget, int(record["eligible"]), policy.audit_share, policy.audit_min)
    more = draw_audit(eligible - set(drawn), max(0, target - len(drawn)), policy.seed, k)
    if more:
        record_audit(store, k, policy.seed, int(record["eligible"]), drawn + more)
    plan.audit = (unsent + more)[:room]
    plan.selected = select_for_review(frame, room - len(plan.audit), exclude=exclude | set(drawn) | set(more))
    return plan


def round_candidates(store: Store, k: int, share: float, **policy: object) -> list[str]:
    """Sample ids round k sends now (audit slice first, then the least confident), within its budget.

    ``policy`` takes the other :class:`ReviewPolicy` fields (``audit_share``, ``audit_min``, ...).
    """
    return plan_round_review(store, k, ReviewPolicy(budget=share, **policy)).sample_ids  # type: ignore[arg-type]
