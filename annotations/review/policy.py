"""How a round spends its review budget: plain settings, importable without the store (flows/config.py uses it)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReviewPolicy"]


@dataclass(frozen=True)
class ReviewPolicy:
    """How a round spends its review budget (flows/config.py ``STCConfig.review_policy()`` builds one).

    Attributes:
        budget: Share of the pool sent to people per round (at least one face; 0: none).
        audit_share: Share of the budget drawn at random (the audit slice); 0 turns the audit off.
        audit_min: Fewest audit faces where the budget and the pool allow.
        reselect_skipped_after: Rounds after a skip before the face may be selected again; None: never.
        seed: Seed of the audit draw (recorded in the round's audit.json).
    """

    budget: float = 0.05
    audit_share: float = 0.2
    audit_min: int = 20
    reselect_skipped_after: int | None = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.budget <= 1:
            raise ValueError(f"review budget must be a share of the pool in [0, 1] (0: no review), got {self.budget!r}")
        if not 0 <= self.audit_share <= 1:
            raise ValueError(f"audit_share must be in [0, 1] (0 turns the audit off), got {self.audit_share!r}")
        if self.audit_min < 0:
            raise ValueError(f"audit_min must be >= 0, got {self.audit_min!r}")
        if self.reselect_skipped_after is not None and self.reselect_skipped_after < 1:
            raise ValueError(
                f"reselect_skipped_after must be >= 1 (rounds) or None (never), got {self.reselect_skipped_after!r}"
            )
