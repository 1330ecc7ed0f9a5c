"""The audit slice: faces drawn at random from the pool, so that people's answers say how good the pool is.

Faces chosen by confidence are the worst ones; their corrections say nothing about the typical
pseudo-label. A share of every round's review budget (default 20%, at least 20 faces where the pool
allows) is therefore drawn as a simple random sample of the round's eligible pool faces (pseudo-
labelled, not yet seen by people, not rejected; :mod:`~annotations.review.candidates`), not by
confidence. Once reviewed, the audited faces give an unbiased estimate of the share of the
unreviewed pseudo-labels whose NME is under a threshold: "how good is my dataset now?" without a
target-domain holdout.

The draw is seeded and recorded. Every eligible face gets the key ``u = BLAKE2b(seed | round |
sample_id)`` read as a number in [0, 1); the audit is the faces with the smallest keys ("bottom-k"
sampling: with a uniform hash every subset of the same size is equally likely, i.e. a simple random
sample without replacement; Cohen & Kaplan, "Summarizing data using bottom-k sketches", PODC 2007).
Raising the budget later takes the next smallest keys, so the slice stays one random sample.
The round's ``audit.json`` records the seed, the eligible count and the audited ids, and the
inclusion probability ``p = audited / eligible`` that the recalibration weights by
(flows/calibration.py).

The estimate pools the reviewed audit faces of all rounds so far (each measures its own round's
pseudo-labels: an audit of round r is answered after round r, so a round's report can only use
earlier rounds' audits) and reports a Wilson score interval (Wilson, JASA 1927; Brown, Cai &
DasGupta, Statistical Science 2001, recommend it over the normal "Wald" interval for small n and
shares near 0 or 1). Drawing without replacement from a finite pool makes the interval slightly
conservative. Audited faces that people skipped or have not answered yet are left out and counted;
rejected ones have left the pool and are left out too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from annotations.review.corrections import CorrectionPairs, correction_pairs
from annotations.store.exclusions import latest_review_status

__all__ = [
    "AUDIT_FILE",
    "audit_keys",
    "audit_outcomes",
    "audit_size",
    "draw_audit",
    "estimate_pool_quality",
    "read_audit",
    "record_audit",
    "wilson_interval",
]

AUDIT_FILE = "audit.json"
_Z95 = 1.959963984540054  # two-sided 95% normal quantile


def audit_size(budget: int, eligible: int, share: float, minimum: int) -> int:
    """Faces of a round's budget that go to the audit.

    ``max(ceil(share * budget), minimum)``, but never more than the budget or the eligible faces;
    0 when ``share`` is 0 (audit off). Below ~20 faces an audit's interval is too wide to act on, hence
    the minimum even where it takes most of a small budget.
    """
    if share <= 0 or budget <= 0:
        return 0
    want = max(int(math.ceil(share * budget)), int(minimum))
    return max(0, min(want, int(budget), int(eligible)))


def audit_keys(sample_ids: Sequence[str], seed: int, k: int) -> np.ndarray:
    """(S,) float64 in [0, 1): each sample's audit key in round k (uniform, fixed by seed and round)."""
    out = np.empty(len(sample_ids), dtype=np.float64)
    for i, sid in enumerate(sample_ids):
        digest = hashlib.blake2b(f"{int(seed)}|{int(k)}|{sid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def draw_audit(eligible: Iterable[str], n: int, seed: int, k: int) -> list[str]:
    """The ``n`` eligible faces with the smallest audit keys (a simple random sample), smallest first."""
    ids = sorted(set(eligible))
    if n <= 0 or not ids:
        return []
    keys = audit_keys(ids, seed, k)
    order = np.lexsort((np.asarray(ids, dtype=object), keys))[:n]
    return [ids[i] for i in order]


def read_audit(store: Any, k: int) -> dict[str, Any] | None:
    """Round k's audit record (``seed``, ``eligible``, ``sample_ids``, ``p``), or None before any draw."""
    return store.read_round_json(k, AUDIT_FILE, default=None)


def record_audit(store: Any, k: int, seed: int, eligible: int, sample_ids: Sequence[str]) -> dict[str, Any]:
    """Write round k's audit record; the eligible count of the first draw is kept (it fixes ``p``)."""
    old = read_audit(store, k)
    n_eligible = int(old["eligible"]) if old else int(eligible)
    ids = list(dict.fromkeys(sample_ids))
    record = {
        "round": int(k),
        "seed": int(seed),
        "eligible": n_eligible,
        "sample_ids": ids,
        "p": len(ids) / n_eligible if n_eligible else None,
        "rule": "the eligible faces with the smallest BLAKE2b(seed|round|sample_id) keys (annotations/review/audit.py)",
    }
    store.write_round_json(k, AUDIT_FILE, record)
    return record


def wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial share (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def audit_outcomes(store: Any, pairs: CorrectionPairs | None = None) -> pd.DataFrame:
    """Every audited face of every round and what became of it.

    Returns:
        One row per audited sample: ``round`` (the last round that drew it), ``sample_id``, ``p`` (its
        inclusion probability), ``status`` (``corrected`` | ``skipped`` | ``rejected`` | ``open``) and
        ``nme`` (real NME of the pseudo-label the person corrected; NaN unless corrected).
    """
    rows = []
    pairs = correction_pairs(store) if pairs is None else pairs
    by_sample = dict(zip(pairs.frame["sample_id"], pairs.frame["nme"], strict=True))
    status = latest_review_status(store).set_index("sample_id")["status"]
    for k in store.rounds():
        record = read_audit(store, k)
        if not record:
            continue
        for sid in record["sample_ids"]:
            if sid in by_sample:
                state, value = "corrected", float(by_sample[sid])
            else:
                state, value = {"skipped": "skipped", "rejected": "rejected"}.get(status.get(sid), "open"), np.nan
            rows.append({"round": k, "sample_id": sid, "p": record.get("p"), "status": state, "nme": value})
    out = pd.DataFrame(rows, columns=["round", "sample_id", "p", "status", "nme"])
    # A skipped audit face may be drawn again by a later round: one answer, counted once (its last draw).
    return out.drop_duplicates("sample_id", keep="last").reset_index(drop=True)


def estimate_pool_quality(outcomes: pd.DataFrame, threshold: float = 0.08, z: float = _Z95) -> dict[str, Any]:
    """The share of pseudo-labels under NME ``threshold``, from the reviewed audit faces.

    Args:
        outcomes: From :func:`audit_outcomes` (all rounds so far, or the rounds wanted).
        threshold: NME under which a pseudo-label counts as good.
        z: Normal quantile of the interval (1.96: 95%).

    Returns:
        ``share``, ``low``, ``high`` (Wilson interval), ``plus_minus`` (half its width), ``n`` (reviewed
        audit faces), ``good``, ``skipped``, ``rejected``, ``open``, ``rounds`` (the rounds whose audits
        were answered), ``threshold`` and ``interval`` (its name). ``share`` is None when no audited
        face has been reviewed yet.
    """
    answered = outcomes[(outcomes["status"] == "corrected") & np.isfinite(outcomes["nme"].astype(float))]
    n = len(answered)
    good = int((answered["nme"].astype(float) < threshold).sum())
    low, high = wilson_interval(good, n, z)
    counts = outcomes["status"].value_counts()
    return {
        "threshold": float(threshold),
        "n": n,
        "good": good,
        "share": good / n if n else None,
        "low": low,
        "high": high,
        "plus_minus": (high - low) / 2,
        "interval": f"Wilson score, {100 * (2 * _normal_cdf(z) - 1):.0f}%",
        "skipped": int(counts.get("skipped", 0)),
        "rejected": int(counts.get("rejected", 0)),
        "open": int(counts.get("open", 0)),
        "rounds": sorted({int(r) for r in answered["round"]}),
    }


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))
