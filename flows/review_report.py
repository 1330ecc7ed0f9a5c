"""The review part of the round report: what people's answers say about the pool and the model.

Three sections, from the store alone (annotations/review/audit.py, corrections.py, and the round's
calibration.json written by flows/calibration.py):

* **How good is the pool?** The share of unreviewed pseudo-labels under NME ``audit_nme``, estimated
  from the audit slices of all rounds so far, with its Wilson interval however wide.
* **How far people moved the landmarks**: the correction delta per round, by region, and by decile
  of the pseudo-label's per-landmark confidence (do people move the landmarks the model doubted?).
* **Calibration**: what the round's confidence model was refitted on, its ranking on the holdout's
  evaluation part before and after, and the thresholds chosen for the confidence schedule.
"""

from __future__ import annotations

from typing import Any

from annotations.review.audit import audit_outcomes, estimate_pool_quality
from annotations.review.corrections import correction_deltas, correction_pairs
from annotations.store import Store
from flows.calibration import CALIBRATION_FILE

__all__ = ["pool_quality_line", "review_section"]


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def pool_quality_line(estimate: dict[str, Any]) -> str:
    """"estimated share of the pool under NME 0.08: 72% ± 9 (...)" or why there is no estimate yet."""
    thr = estimate["threshold"]
    if estimate["share"] is None:
        drawn = estimate["open"] + estimate["skipped"] + estimate["rejected"]
        return f"estimated share of the pool under NME {thr:g}: no audited face reviewed yet ({drawn} drawn)"
    rounds = estimate["rounds"]
    span = f"round {rounds[0]}" if len(rounds) == 1 else f"rounds {rounds[0]}-{rounds[-1]}"
    return (
        f"estimated share of the pool under NME {thr:g}: {_pct(estimate['share'])} ± "
        f"{100 * estimate['plus_minus']:.0f} ({estimate['interval']} interval {_pct(estimate['low'])}-"
        f"{_pct(estimate['high'])}; {estimate['n']} audited faces reviewed, {span}; {estimate['skipped']} skipped, "
        f"{estimate['rejected']} rejected, {estimate['open']} not answered yet)"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _audit_md(store: Store, outcomes: Any, threshold: float) -> list[str]:
    md = ["## How good is the pool? (audit slice)\n", pool_quality_line(estimate_pool_quality(outcomes, threshold))]
    md.append(
        "\nAudit faces are drawn at random from the unreviewed pool (not by confidence), so their corrections "
        "estimate the quality of every pseudo-label nobody has looked at.\n"
    )
    rows = []
    for k in sorted(set(outcomes["round"])):
        e = estimate_pool_quality(outcomes[outcomes["round"] == k], threshold)
        interval = None if e["share"] is None else f"{_pct(e['low'])}-{_pct(e['high'])}"
        rows.append([k, int((outcomes["round"] == k).sum()), e["n"], None if e["share"] is None else _pct(e["share"]),
                     interval])  # fmt: skip
    if rows:
        md.append(_table(["round", "audited", "reviewed", f"under NME {threshold:g}", "95% interval"], rows))
    return md


def _deltas_md(store: Store, pairs: Any) -> list[str]:
    deltas = correction_deltas(pairs, store.scheme)
    if not deltas:
        return ["## Correction deltas\n", "_no correction pulled yet_\n"]
    regions = list(deltas[-1]["regions"])
    md = ["## Correction deltas (how far people moved the landmarks, NME units)\n"]
    rows = [[d["round"], d["faces"], d["mean"], *[d["regions"].get(r) for r in regions]] for d in deltas]
    md.append(_table(["pseudo-labels of round", "faces", "all landmarks", *regions], rows))
    latest = deltas[-1]
    if latest["deciles"]:
        md.append(f"\nBy decile of the landmark confidence, round {latest['round']} (1 = least confident):\n")
        rows = [[d["decile"], f"{d['confidence'][0]:.2f}-{d['confidence'][1]:.2f}", d["landmarks"], d["delta"]]
                for d in latest["deciles"]]  # fmt: skip
        md.append(_table(["decile", "confidence", "landmarks", "mean delta"], rows))
    return md


def _calibration_md(store: Store, k: int) -> list[str]:
    record = store.read_round_json(k, CALIBRATION_FILE, default=None)
    if not record:
        return []
    md = [f"## Confidence calibration, round {k}\n"]
    if not record.get("recalibrated"):
        return md + [f"Not recalibrated on reviewed faces: {record.get('reason', 'not run')}.\n"]
    fit, ev = record["fitted_on"], record["holdout_evaluation_spearman"]
    md.append(
        f"Refitted on {fit['holdout_calibration']} holdout calibration faces and {fit['reviewed']} reviewed pool "
        f"faces ({fit['audit']} from the audit, weighted 1/p; the rest weight 1). Spearman of predicted vs real NME "
        f"on the {ev['faces']} holdout evaluation faces: {_num(ev['before'])} before, {_num(ev['after'])} after.\n"
    )
    if record.get("thresholds"):
        old, new = record["previous_thresholds"], record["thresholds"]
        md.append("Confidence schedule thresholds (predicted NME), used for this round's pseudo-labels and "
                  "recorded in the next round's config.json:\n")  # fmt: skip
        md.append(_table(["level", "before", "from reviews"], [[n, old[n], new[n]] for n in new]))
    return md


def review_section(store: Store, k: int, audit_nme: float = 0.08) -> str:
    """The review sections of round k's report (markdown)."""
    pairs = correction_pairs(store)
    outcomes = audit_outcomes(store, pairs)
    md = _audit_md(store, outcomes, audit_nme) + _deltas_md(store, pairs) + _calibration_md(store, k)
    return "\n".join(md)
