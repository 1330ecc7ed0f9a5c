"""The report of the self-training benchmark: targets, seeds and paired differences, every method, what review buys."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _stc_measure import HOLDOUTS, holdout_frame

__all__ = ["check_targets", "write_report"]

TARGETS = ("occlusion", "pose")


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    """The last round of every (method, seed)."""
    last = frame.groupby(["method", "seed"])["round"].transform("max")
    return frame[frame["round"] == last]


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """Default schedule vs equal-steps supervised per target holdout: per-seed pairs, mean gain, its SE."""
    frame = _final(holdout_frame(res))
    default = res["plan"]["default"]
    out = {}
    for name in HOLDOUTS:
        a = frame[(frame.method == default) & (frame.holdout == name)].set_index("seed")["nme"]
        b = frame[(frame.method == "supervised-steps") & (frame.holdout == name)].set_index("seed")["nme"]
        seeds = sorted(set(a.index) & set(b.index))
        if not seeds:
            continue
        gain = np.array([(b[s] - a[s]) / b[s] for s in seeds])  # relative NME reduction, > 0 = self-training wins
        se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        out[name] = {
            "seeds": seeds,
            "default": [float(a[s]) for s in seeds],
            "supervised": [float(b[s]) for s in seeds],
            "gain": gain.tolist(),
            "mean_gain": float(gain.mean()),
            "se": se,
            "all_positive": bool((gain > 0).all()),
            "above_2se": bool(np.isfinite(se) and gain.mean() > 2 * se),
        }
    return out


def _review_ratio(res: dict[str, Any]) -> dict[str, Any] | None:
    default = res["plan"]["default"]
    runs = res["runs"].get(default, {})
    ratios = []
    for seed, run in runs.items():
        last = run["rounds"][-1].get("review_value")
        if last:
            p, r = last["to_95"]["pipstc"], last["to_95"]["random"]
            ratios.append({"seed": int(seed), "pipstc": p, "random": r, "worst first": last["to_95"]["worst first"],
                           "ratio": (p / r) if p is not None and r else None, "faces": last["faces"]})  # fmt: skip
    return {"per_seed": ratios} if ratios else None


def check_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The three targets of issue 13 with the measured value, met or not."""
    head = headline(res)
    out = []
    for name in TARGETS:
        h = head.get(name)
        met = bool(h and h["mean_gain"] >= 0.15 and h["all_positive"] and h["above_2se"])
        value = f"{100 * h['mean_gain']:.1f} % (SE {100 * h['se']:.1f})" if h else "–"
        out.append({"target": f"default >= 15 % lower NME than equal-steps supervised on {name}, every seed, > 2 SE",
                    "value": value, "met": met})  # fmt: skip
    rv = _review_ratio(res)
    if rv:
        ratios = [r["ratio"] for r in rv["per_seed"] if r["ratio"] is not None]
        out.append({"target": "final round: pipstc's selection needs <= 1/3 of random review's corrections to 95 %",
                    "value": f"{np.mean(ratios):.2f}" if ratios else "never reached",
                    "met": bool(ratios and max(ratios) <= 1 / 3)})  # fmt: skip
    frame = holdout_frame(res)
    d = _final(frame[frame.method == res["plan"]["default"]])
    aurocs = {n: float(d[d.holdout == n]["auroc"].mean()) for n in TARGETS}
    out.append({"target": "failure-detection AUROC >= 0.9 on both target domains",
                "value": ", ".join(f"{n} {v:.3f}" for n, v in aurocs.items()),
                "met": all(v >= 0.9 for v in aurocs.values())})  # fmt: skip
    return out


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _plots(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = holdout_frame(res)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, name in zip(axes, HOLDOUTS, strict=True):
        sub = frame[frame.holdout == name]
        for key in res["runs"]:
            g = sub[sub.method == key].groupby("round")["nme"]
            if g.ngroups > 1:
                ax.errorbar(g.mean().index, g.mean().values, yerr=g.std().fillna(0).values, marker="o", label=key,
                            capsize=2)  # fmt: skip
            elif g.ngroups == 1:
                ax.axhline(g.mean().iloc[0], ls="--", lw=1, label=key)
        ax.set(title=f"{name} holdout", xlabel="round", ylabel="NME")
    axes[0].legend(fontsize=6)
    (out / "nme_per_round.png").write_bytes(_png(fig))
    plt.close(fig)
    default = res["runs"].get(res["plan"]["default"], {})
    first = next(iter(default.values()), None)
    if first and first["rounds"][-1].get("review_value"):
        rv = first["rounds"][-1]["review_value"]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name, curve in rv["curves"].items():
            ax.plot(range(len(curve)), [100 * v for v in curve], label=name)
        hand = "label everything by hand"
        ax.plot([0, rv["faces"]], [100 * rv["good_before"], 100], ls=":", color="grey", label=hand)
        ax.axhline(95, color="black", lw=0.5)
        ax.set(xlabel="corrections", ylabel="% of pool within NME 0.08", title="pool quality vs corrections")
        ax.legend(fontsize=7)
        (out / "review_value.png").write_bytes(_png(fig))
        plt.close(fig)
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for ax, name in zip(axes, HOLDOUTS, strict=True):
            bins = first["rounds"][-1]["holdouts"][name]["confidence"]["reliability"]
            ax.plot([b["predicted"] for b in bins], [b["real"] for b in bins], marker="o")
            top = max([b["predicted"] for b in bins] + [b["real"] for b in bins])
            ax.plot([0, top], [0, top], ls=":", color="grey")
            ax.set(title=f"reliability, {name}", xlabel="predicted NME", ylabel="real NME")
        (out / "reliability.png").write_bytes(_png(fig))
        plt.close(fig)


def _mean_sd(values: list[float]) -> str:
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.4f} ± {sd:.4f}"


def _headline_lines(res: dict[str, Any]) -> list[str]:
    head = headline(res)
    rows = []
    for name, h in head.items():
        pairs = ", ".join(f"s{s}: {a:.4f} vs {b:.4f}" for s, a, b in zip(h["seeds"], h["default"], h["supervised"],
                                                                        strict=True))  # fmt: skip
        rows.append([name, _mean_sd(h["default"]), _mean_sd(h["supervised"]),
                     f"{100 * h['mean_gain']:+.1f} % ± {100 * h['se']:.1f}", pairs])  # fmt: skip
    header = ["holdout", f"{res['plan']['default']} (mean ± sd)", "supervised, equal steps", "paired gain ± SE",
              "per seed (default vs supervised)"]  # fmt: skip
    return _table(header, rows)


def _methods_lines(res: dict[str, Any]) -> list[str]:
    frame = holdout_frame(res)
    rows = []
    for key, title in res["methods"].items():
        sub = frame[frame.method == key]
        if sub.empty:
            rows.append([title, "not run", "", "", "", ""])
            continue
        cells = []
        for name in HOLDOUTS:
            g = sub[sub.holdout == name].groupby("round")
            cells.append(" → ".join(f"{v:.4f}" for v in g["nme"].mean().values))
        seeds = sub["seed"].nunique()
        images = sum(r["training_images"] for run in res["runs"][key].values() for r in run["rounds"]) / max(seeds, 1)
        rows.append([title, str(seeds), f"{images / 1e3:.1f}k", *cells])
    return _table(["method", "seeds", "training images", *[f"{n} NME per round" for n in HOLDOUTS]], rows)


def _confidence_lines(res: dict[str, Any]) -> list[str]:
    frame = holdout_frame(res)
    sub = frame[frame.method == res["plan"]["default"]]
    rows = []
    for (rnd, name), g in sub.groupby(["round", "holdout"]):
        rows.append([str(rnd), name, float(g["spearman"].mean()), float(g["auroc"].mean()), float(g["ause"].mean()),
                     float(g["nme"].mean())])  # fmt: skip
    return _table(["round", "holdout", "Spearman", "AUROC (NME > 0.08)", "AUSE", "NME"], rows)


def _review_lines(res: dict[str, Any]) -> list[str]:
    rows = []
    for seed, run in res["runs"].get(res["plan"]["default"], {}).items():
        for r in run["rounds"]:
            rv = r.get("review_value")
            if rv:
                t = rv["to_95"]
                rows.append([seed, str(r["round"]), str(rv["faces"]), f"{100 * rv['good_before']:.1f} %",
                             _f(t["pipstc"]), _f(t["random"]), _f(t["worst first"])])  # fmt: skip
    return _table(["seed", "round", "pool faces", "within 0.08 before review", "pipstc selection", "random",
                   "worst first (oracle)"], rows)  # fmt: skip


def _level_lines(res: dict[str, Any]) -> list[str]:
    rows = []
    for key, runs in res["runs"].items():
        run = next(iter(runs.values()))
        for r in run["rounds"]:
            for lv in (r.get("pseudo") or {}).get("levels", []):
                rows.append([key, str(r["round"]), lv["level"], str(lv["labels"]), lv["nme_mean"], lv["gross_share"],
                             lv["predicted_nme_mean"]])  # fmt: skip
    return _table(["method", "made by round", "level", "labels", "real NME", "share > 0.1", "predicted NME"], rows)


def write_report(res: dict[str, Any], out: Path) -> Path:
    """Write ``stc.md``, ``results.json`` and the plots into ``out``."""
    res["targets"] = check_targets(res)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    _plots(res, out)
    plan = res["plan"]
    lines = [
        "# Self-training benchmark",
        "",
        f"Command: `{plan['command']}`. Regime `{plan['severity']}`, seeds {plan['seeds']}, sizes {plan['sizes']}, "
        f"model {plan['model']}, round 0 {plan['round0_epochs']} epochs, {plan['rounds']} rounds x {plan['epochs']} "
        f"epochs, review {plan['review_budget']:.0%} of the pool per round (noise {plan['reviewer_noise']:.0%} of the "
        f"inter-ocular distance). pipstc's default schedule: `{plan['default']}`."
        + (" QUICK RUN: tiny sizes, numbers meaningless." if plan["quick"] else ""),
        "",
        "## Targets",
        "",
        *_table(["target", "measured", "met"], [[t["target"], t["value"], "yes" if t["met"] else "NO"]
                                                 for t in res["targets"]]),  # fmt: skip
        "",
        "## Headline: the default schedule against supervised training of equal steps (final round)",
        "",
        *_headline_lines(res),
        "",
        "## Every method (mean over its seeds; supervised rows are one training)",
        "",
        *_methods_lines(res),
        "",
        "![NME per round](nme_per_round.png)",
        "",
        "## Confidence quality of the default schedule, per holdout and round",
        "",
        *_confidence_lines(res),
        "",
        "![reliability](reliability.png)",
        "",
        "## What a data team buys: corrections to reach 95 % of the pool within NME 0.08",
        "",
        *_review_lines(res),
        "",
        "![review value](review_value.png)",
        "",
        "## Pseudo-label quality per level and round (first seed)",
        "",
        *_level_lines(res),
        "",
    ]  # fmt: skip
    path = out / "stc.md"
    path.write_text("\n".join(lines))
    return path
