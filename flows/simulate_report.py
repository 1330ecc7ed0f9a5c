"""The report of ``pipstc simulate``: which schedule and review budget pay off on a team's own data."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["write_simulation_report"]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _plots(rows: pd.DataFrame, curves: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, g in rows.groupby("arm", sort=False):
        axes[0].plot(g["round"], g["nme"], marker="o", label=arm)
        axes[1].plot(g["round"], 100 * g["pool_good"], marker="o", label=arm)
    base = rows[rows["round"] == 0]["nme"].mean()
    axes[0].axhline(base, color="grey", ls=":", lw=1, label="round 0 (supervised)")
    axes[0].set(xlabel="round", ylabel="holdout NME", title="holdout NME per round")
    axes[1].set(xlabel="round", ylabel="% of pool labels within NME 0.08", title="pool label quality")
    axes[0].legend(fontsize=7)
    (out / "simulation_rounds.png").write_bytes(_png(fig))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, curve in curves["curves"].items():
        ax.plot(range(len(curve)), [100 * v for v in curve], label=name)
    n = curves["faces"]
    ax.plot([0, n], [100 * curves["good_before"], 100], color="grey", ls=":", lw=1, label="label everything by hand")
    ax.axhline(95, color="black", lw=0.5)
    ax.set(xlabel="corrections", ylabel="% of pool within NME 0.08", title=f"review value at round {curves['round']}")
    ax.legend(fontsize=7)
    (out / "simulation_review_value.png").write_bytes(_png(fig))
    plt.close(fig)


def _verdict(rows: pd.DataFrame) -> list[str]:
    last = rows.sort_values("round").groupby("arm").tail(1).set_index("arm")
    base = float(rows[rows["round"] == 0]["nme"].mean())
    best = last["nme"].idxmin()
    lines = [f"- Round 0 (supervised on the kept labels): holdout NME {base:.4f}."]
    for arm, r in last.iterrows():
        gain = 100 * (base - r["nme"]) / base
        lines.append(
            f"- `{arm}`: holdout NME {r['nme']:.4f} after round {int(r['round'])} ({gain:+.1f} % vs round 0), "
            f"{100 * r['pool_good']:.1f} % of pool labels within NME 0.08, {int(r['corrected'])} corrections."
        )
    pays = float(last.loc[best, "nme"]) < base
    lines.append(f"- On this data `{best}` ends best" + ("." if pays else ", but no arm beats round 0: self-training "
                 "does not pay off here; label more faces by hand or review instead."))  # fmt: skip
    return lines


def write_simulation_report(result: dict[str, Any], out: Path) -> str:
    """Write ``simulation.md`` and its PNGs into ``out``; returns the markdown."""
    rows = pd.DataFrame(result["rounds"])
    curves = result["curves"]
    _plots(rows, curves, out)
    hidden = result["hidden"]
    table = ["| arm | round | holdout NME | FR@0.1 | pool labels within 0.08 | pseudo-label NME | corrections |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows.itertuples():
        table.append(f"| {r.arm} | {r.round} | {r.nme:.4f} | {r.fr:.3f} | {100 * r.pool_good:.1f} % | "
                     f"{r.pseudo_nme:.4f} | {r.corrected} |")  # fmt: skip
    to95 = ", ".join(f"{k}: {'never' if v is None else v}" for k, v in curves["to_95"].items())
    text = "\n".join([
        "# pipstc simulate",
        "",
        f"{hidden['hidden']} of the store's {hidden['train_faces']} human-labeled train faces had their labels "
        f"hidden and became the simulated pool; {hidden['kept']} kept their labels; the {hidden['holdout']} holdout "
        "faces measure every round. A simulated reviewer answered each round's review with the truth plus noise "
        f"of {result['plan']['reviewer_noise']:.0%} of the inter-ocular distance per landmark.",
        "",
        "## What pays off on this data",
        "",
        *_verdict(rows),
        "",
        "## Rounds",
        "",
        *table,
        "",
        "![rounds](simulation_rounds.png)",
        "",
        f"## Review value at round {curves['round']} (arm `{rows['arm'].iloc[0]}`)",
        "",
        f"Corrections needed to reach 95 % of the pool within NME 0.08 ({curves['faces']} faces, "
        f"{100 * curves['good_before']:.1f} % within before any correction): {to95}. Labeling everything by hand "
        f"takes {curves['faces']}.",
        "",
        "![review value](simulation_review_value.png)",
        "",
    ])  # fmt: skip
    (out / "simulation.md").write_text(text)
    return text
