"""The round report: metrics per round, what each round trained, CED curve, confidence vs error, the worst faces,
and what the reviews say (the pool's estimated quality, correction deltas, recalibration: flows/review_report.py).

Written into the store's round folder (``report.md`` + PNGs) and returned as markdown for the
Prefect artifact. Matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import io
from typing import Any

import cv2
import numpy as np

from annotations.store import Store
from flows.review_report import review_section
from pipnet_core.images import ImageReadError, read_image
from pipnet_core.metrics import ced

__all__ = ["epochs_trained", "metrics_rows", "trained_lines", "write_report"]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def epochs_trained(store: Store) -> dict[int, tuple[int, int]]:
    """Per round: (epochs of its own training, epochs its model has seen in all).

    A round whose training started from the previous round's weights (a warm start, or STLD's
    pretraining lineage) carries that round's total: its holdout NME reflects all of those epochs,
    so a gain over round 0 is self-training *and* extra training until compared with supervised
    training of equal length (bench/RESULTS.md). The fold models of cross pseudo-labeling are not counted
    (they label the pool; the round's model never trains from them).
    """
    out: dict[int, tuple[int, int]] = {}
    for k in store.rounds():
        info = store.read_round_json(k, "training_set.json", default=None) or {}
        cfg = store.read_round_json(k, "config.json", default=None) or {}
        stages = info.get("stages") or [{"epochs": (cfg.get("train") or cfg).get("epochs", 0), "init_from": None}]
        stages = [st for st in stages if "fold" not in st]  # cross-fitting's fold models are not the round's model
        own = int(sum(int(st.get("epochs", 0)) for st in stages))
        earlier = f"round={k - 1}"
        warm = any(earlier in str(st.get("init_from") or "") for st in stages)
        out[k] = (own, own + (out.get(k - 1, (0, 0))[1] if warm else 0))
    return out


def metrics_rows(store: Store) -> list[dict[str, Any]]:
    """One row per evaluated round: the table of the report and of the Prefect artifact."""
    rows = []
    epochs = epochs_trained(store)
    for k in store.rounds():
        m = store.read_round_json(k, "metrics.json", default=None)
        if not m:
            continue
        steps = store.completed_steps(k)
        pseudo = (steps.get("label_pool") or {}).get("levels", {})
        review = steps.get("review") or {}
        sync = steps.get("sync_reviews") or {}
        rows.append(
            {
                "round": k,
                "holdout NME": round(m["nme"], 4),
                "FR@0.1": round(m["fr@0.1"], 4),
                "AUC@0.1": round(m["auc@0.1"], 4),
                "epochs (in all)": _epochs_cell(epochs.get(k)),
                "confidence Spearman": None
                if m.get("confidence_spearman") is None
                else round(m["confidence_spearman"], 3),
                "pseudo-labels": ", ".join(f"{lv}: {n}" for lv, n in sorted(pseudo.items())) or "-",
                "sent to review": review.get("sent") or review.get("pushed") or review.get("written", 0),
                "review budget": review.get("budget"),
                "corrections pulled": sync.get("corrected", 0),
            }
        )
    return rows


def _epochs_cell(e: tuple[int, int] | None) -> str:
    if e is None:
        return "-"
    own, total = e
    return str(own) if total == own else f"{own} ({total})"


def trained_lines(store: Store) -> list[str]:
    """One line per trained round naming its stages, e.g. ``round 2: pretrain 12 epochs: 600 pseudo (std);
    fine-tune 60 epochs: 300 human (std), 600 pseudo (aux cls3, p 2.4, w 0.1)``."""
    lines = []
    for k in store.rounds():
        info = store.read_round_json(k, "training_set.json", default=None) or {}
        if info.get("trained"):
            lines.append(f"round {k}: {info['trained']}")
    return lines


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_no evaluated round yet_\n"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _draw_face(image_uri: str, pred: np.ndarray, gt: np.ndarray, size: int = 160) -> np.ndarray:
    """A BGR tile of the face with the model's landmarks (red) and the truth (green)."""
    try:
        img = cv2.cvtColor(read_image(str(image_uri).removeprefix("file://")).rgb, cv2.COLOR_RGB2BGR)
    except ImageReadError:
        return np.zeros((size, size, 3), np.uint8)
    both = np.concatenate([pred, gt])
    x0, y0 = np.nanmin(both, axis=0)
    x1, y1 = np.nanmax(both, axis=0)
    pad = 0.25 * max(x1 - x0, y1 - y0, 1.0)
    x0, y0, x1, y1 = x0 - pad, y0 - pad, x1 + pad, y1 + pad
    scale = size / max(x1 - x0, y1 - y0)
    m = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], dtype=np.float64)
    face = cv2.warpAffine(img, m, (size, size), borderValue=(0, 0, 0))
    for pts, colour in ((gt, (0, 200, 0)), (pred, (0, 0, 255))):
        for x, y in pts:
            if np.isfinite(x) and np.isfinite(y):
                cv2.circle(face, (int(round((x - x0) * scale)), int(round((y - y0) * scale))), 1, colour, -1)
    return face


def _curves(store: Store, k: int, rows: list[dict[str, Any]], preds: Any) -> list[str]:
    """CED per round, NME per round against round 0 (supervised), predicted vs real NME."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_face, predicted = preds["per_face"], preds["predicted_nme"]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    # the field's CED stops at 0.1; a model that is still far from it is shown up to 0.3
    xmax = 0.1 if np.mean(per_face <= 0.1) >= 0.5 else 0.3
    for kk in store.rounds():
        try:
            p = np.load(io.BytesIO(store.read_round_file(kk, "holdout_predictions.npz")))
        except (FileNotFoundError, OSError):
            continue
        xs, ys = ced(p["per_face"], threshold=xmax)
        ax[0].plot(xs, ys, label=f"round {kk}")
    ax[0].set(title="CED on the holdout", xlabel="NME", ylabel="fraction of faces", xlim=(0, xmax), ylim=(0, 1))
    ax[0].legend()
    ks = [r["round"] for r in rows]
    ax[1].plot(ks, [r["holdout NME"] for r in rows], marker="o", label="holdout NME")
    if rows and rows[0]["round"] == 0:
        ax[1].axhline(rows[0]["holdout NME"], color="grey", ls=":", label="round 0 (supervised)")
    ax[1].set(title="holdout NME per round", xlabel="round", ylabel="NME")
    ax[1].legend()
    ax[2].scatter(predicted, per_face, s=6)
    lim = float(max(np.max(per_face), np.max(predicted), 1e-3))
    ax[2].plot([0, lim], [0, lim], "k--", lw=0.8)
    ax[2].set(title="confidence: predicted vs real NME", xlabel="predicted NME", ylabel="real NME")
    store.write_round_file(k, "report_curves.png", _png(fig))
    plt.close(fig)
    return ["\n![curves](report_curves.png)\n"]


def _worst_faces(store: Store, k: int, preds: Any, worst: int) -> list[str]:
    per_face = preds["per_face"]
    order = np.argsort(-per_face)[:worst]
    samples = store.samples().set_index("sample_id")
    tiles = [_draw_face(str(samples.loc[str(preds["sample_ids"][i]), "image_uri"]), preds["landmarks"][i],
                        preds["gt"][i]) for i in order]  # fmt: skip
    if not tiles:
        return []
    cols = 6
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.concatenate([np.concatenate(tiles[r : r + cols], axis=1) for r in range(0, len(tiles), cols)])
    ok, png = cv2.imencode(".png", grid)
    if not ok:
        return []
    store.write_round_file(k, "worst_faces.png", png.tobytes())
    return ["\n## Worst holdout faces (red: model, green: truth)\n\n![worst](worst_faces.png)\n",
            "NME of these faces: " + ", ".join(f"{per_face[i]:.3f}" for i in order) + "\n"]  # fmt: skip


def _warm_note(rows: list[dict[str, Any]]) -> str:
    warm = [r["round"] for r in rows if "(" in str(r.get("epochs (in all)", ""))]
    if not warm:
        return ""
    return (f"\nRound(s) {', '.join(map(str, warm))} started from the previous round's weights: the epochs in "
            "brackets are all their model has trained, so their gain over round 0 (the dotted line in the plot) "
            "is self-training plus extra training; bench/RESULTS.md compares with supervised training of equal "
            "length.\n")  # fmt: skip


def write_report(store_url: str, k: int, worst: int = 12) -> str:
    """Write rounds/round=k/report.md with its plots; returns the markdown."""
    store = Store.open(store_url)
    rows = metrics_rows(store)
    md = [f"# pipstc report — round {k}\n", f"Store: `{store.url}` · scheme `{store.scheme.name}`\n"]
    md.append("## Holdout metrics per round\n")
    md.append(_markdown_table(rows))
    md.append(_warm_note(rows))
    trained = trained_lines(store)
    if trained:
        md.append("\n## What each round trained\n")
        md.append("\n".join(f"- {line}" for line in trained) + "\n")
    m = store.read_round_json(k, "metrics.json", default=None)
    if m:
        md.append(f"\nNME per region (round {k}): ")
        md.append(", ".join(f"{r} {v:.4f}" for r, v in m["nme_by_region"].items()) + "\n")
    preds = None
    try:
        preds = np.load(io.BytesIO(store.read_round_file(k, "holdout_predictions.npz")))
    except (FileNotFoundError, OSError, KeyError):
        preds = None
    if preds is not None:
        md += _curves(store, k, rows, preds)
        md += _worst_faces(store, k, preds, worst)
    cfg = store.read_round_json(k, "config.json", default=None) or {}
    md.append("\n" + review_section(store, k, float(cfg.get("audit_nme", 0.08))))
    rejects = store.rejects()
    md.append(f"\n## Rejects\n{len(rejects)} inputs could not be used")
    if len(rejects):
        md.append(": " + ", ".join(f"{s}: {n}" for s, n in rejects["stage"].value_counts().items()))
    md.append("\n")
    text = "\n".join(md)
    store.write_round_file(k, "report.md", text.encode())
    return text
