"""``pipstc simulate``: before a team commits to self-training, the same rounds on its own labels.

A share of the team's human-labeled training faces (default 80 %) has its labels hidden: those faces
become a simulated pool whose truth is known; the holdout is kept. Each *arm* (a schedule and a
review budget) then runs round 0 and the self-training rounds on its own copy of that store through
the real round flow (:func:`flows.stc.stc_round`), and a simulated reviewer answers each round's
review step with the truth plus a little label noise (about 1 % of the inter-ocular distance per
landmark, the disagreement of careful annotators). The report says, on this data, which schedule and
budget pay off: holdout NME per round per arm, the share of pool labels within NME 0.08 per round, and
pool quality against the number of corrections for pipstc's selection, random review and the oracle.

Everything lands under ``<out>``: ``truth.npz`` (the hidden labels), ``stores/<arm>/`` (one store per
arm, resumable like any store), ``simulation.json`` (results), ``simulation.md`` and PNG plots.
Rerunning resumes: finished rounds are kept, an interrupted round resumes after its last step.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from annotations.store import Store
from flows.config import STCConfig
from flows.simulate_review import (
    TRUTH_FILE,
    correction_curves,
    hide_labels,
    load_truth,
    pool_quality,
    simulated_review,
)

__all__ = ["Arm", "SimulationPlan", "estimate_cost", "plan_simulation", "simulation"]


@dataclass(frozen=True)
class Arm:
    """One way of running the rounds: a schedule and the share of the pool reviewed per round."""

    schedule: str
    budget: float

    @property
    def key(self) -> str:
        return self.schedule if self.budget <= 0 else f"{self.schedule}+review{self.budget:g}"


@dataclass(frozen=True)
class SimulationPlan:
    """What a simulation runs. ``config`` is the STC config of every arm (schedule and budget set per arm)."""

    arms: tuple[Arm, ...]
    rounds: int = 3
    hidden_share: float = 0.8
    seed: int = 0
    reviewer_noise: float = 0.01  # per-landmark noise std, as a share of the NME normaliser (inter-ocular)
    config: dict[str, Any] = field(default_factory=dict)

    def arm_config(self, arm: Arm) -> STCConfig:
        return STCConfig.from_dict(self.config).replace(schedule=arm.schedule, review_budget=max(arm.budget, 0.0))


def plan_simulation(
    store_url: str,
    schedules: tuple[str, ...] = ("paper", "confidence", "stld"),
    budgets: tuple[float, ...] = (0.0, 0.05),
    rounds: int = 3,
    hidden_share: float = 0.8,
    small: bool = False,
    quick: bool = False,
    seed: int = 0,
) -> SimulationPlan:
    """The plan for a store: its last round's config (or the defaults), ``--small`` the demo model, ``--quick`` tiny."""
    store = Store.open(store_url)
    saved = next((store.read_round_json(k, "config.json") for k in reversed(store.rounds())
                  if store.read_round_json(k, "config.json", default=None)), None)  # fmt: skip
    cfg = STCConfig.from_dict(saved) if saved else STCConfig()
    if small:
        cfg = STCConfig.demo(**{k: v for k, v in cfg.to_dict().items() if k != "train"})
    if quick:
        cfg = STCConfig.tiny(epochs=2)
        rounds = min(rounds, 1)
    arms = tuple(Arm(s, b) for s in schedules for b in budgets)
    return SimulationPlan(arms=arms, rounds=rounds, hidden_share=hidden_share, seed=seed, config=cfg.to_dict())


def _measured_rate(cfg: STCConfig, num_landmarks: int, steps: int = 4) -> float:
    """Training images/s of the arm's model on this machine: a few bare steps on random crops."""
    import time

    import torch

    from pipnet_core.loss import pip_loss, targets_to_torch
    from pipnet_core.meanface import build_neighbour_table
    from pipnet_core.model import create_model
    from pipnet_core.targets import build_targets

    t = cfg.train
    model = create_model(num_landmarks, num_nb=t.num_nb, backbone=t.backbone, base_width=t.base_width,
                         input_size=t.input_size, net_stride=t.net_stride).train()  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.2, 0.8, (num_landmarks, 2))
    table = build_neighbour_table(mean, t.num_nb)
    x = torch.randn(t.batch_size, 3, t.input_size, t.input_size)
    lm = np.clip(mean[None] + rng.normal(0, 0.02, (t.batch_size, num_landmarks, 2)), 0, 1)
    tgt = targets_to_torch(build_targets(lm, ["std"] * t.batch_size, table.nb, t.grid))
    seconds = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = pip_loss(model(x), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seconds += (time.perf_counter() - t0) if i else 0.0  # the first step warms up
    return steps * t.batch_size / max(seconds, 1e-9)


def _arm_images(cfg: STCConfig, labeled: int, pool: int, rounds: int) -> int:
    """Training images of one arm: every stage of every round, people's labels and the pool as each stage uses them."""
    policy = cfg.policy()
    total = 0
    for k in range(rounds + 1):
        for stage in policy.stages(k, lineage=k > 1):
            faces = (max(labeled, stage.oversample) if stage.human is not None else 0)
            faces += pool if (stage.pseudo is not None and k > 0) else 0
            total += faces * stage.epochs(cfg.train.epochs, cfg.train.milestones)[0]
    return total


def estimate_cost(plan: SimulationPlan, faces: int, num_landmarks: int) -> dict[str, float]:
    """Training images (faces x epochs x stages x rounds, all arms) and hours at the measured rate, before it runs.

    ``faces`` is the store's human-labeled train faces: ``hidden_share`` of them become the pool.
    """
    pool = int(round(plan.hidden_share * faces))
    images = sum(_arm_images(plan.arm_config(arm), faces - pool, pool, plan.rounds) for arm in plan.arms)
    rate = _measured_rate(STCConfig.from_dict(plan.config), num_landmarks)
    return {"training_images": float(images), "images_per_s": rate, "hours": images / rate / 3600.0}


def _arm_url(out: Path, arm: Arm) -> str:
    return str(out / "stores" / arm.key.replace("+", "-"))


def _run_arm(out: Path, base_url: str, plan: SimulationPlan, arm: Arm, truth: dict[str, np.ndarray],
             progress: Any, done_before: int, total: int) -> list[dict[str, Any]]:  # fmt: skip
    """Round 0 and the self-training rounds of one arm; returns one result row per round."""
    from flows.stc import stc_round

    url = _arm_url(out, arm)
    if not Path(url, "store.json").exists():
        shutil.copytree(base_url, url)
    cfg = plan.arm_config(arm)
    rows = []
    corrected = 0
    for k in range(plan.rounds + 1):
        stc_round(url, k, cfg.to_dict())
        store = Store.open(url)
        if arm.budget > 0 and k < plan.rounds and "simulated_review" not in store.completed_steps(k):
            n = simulated_review(url, k, truth, noise=plan.reviewer_noise, seed=plan.seed + k)
            store.mark_step(k, "simulated_review", {"corrected": n})
        corrected += int(store.completed_steps(k).get("simulated_review", {}).get("corrected", 0))
        metrics = store.read_round_json(k, "metrics.json")
        rows.append({"arm": arm.key, "round": k, "nme": metrics["nme"], "fr": metrics["fr@0.1"],
                     "corrected": corrected, **pool_quality(store, k, truth)})  # fmt: skip
        update_progress_artifact(artifact_id=progress, progress=100.0 * (done_before + k + 1) / total)
    return rows


@flow(name="simulation", log_prints=True)
def simulation(store: str, out: str, plan: dict[str, Any]) -> dict[str, Any]:
    """The simulation of ``plan`` (a :class:`SimulationPlan` as a dict) on ``store``, written under ``out``."""
    sim = SimulationPlan(arms=tuple(Arm(**a) for a in plan["arms"]),
                         **{k: v for k, v in plan.items() if k != "arms"})  # fmt: skip
    os.environ.pop("PIPSTC_LABEL_STUDIO_URL", None)  # never push simulated faces to the team's Label Studio
    work = Path(out)
    base = str(work / "stores" / "_base")
    hidden = hide_labels(store, base, work / TRUTH_FILE, sim.hidden_share, sim.seed)
    truth = load_truth(work / TRUTH_FILE)
    print(f"simulation: {hidden['hidden']} of {hidden['train_faces']} labeled train faces hidden as the pool; "
          f"{len(sim.arms)} arms x {sim.rounds + 1} rounds")  # fmt: skip
    total = len(sim.arms) * (sim.rounds + 1)
    progress = create_progress_artifact(progress=0.0, description="simulation: arms x rounds done")
    rows: list[dict[str, Any]] = []
    for i, arm in enumerate(sim.arms):
        rows += _run_arm(work, base, sim, arm, truth, progress, i * (sim.rounds + 1), total)
    curves = correction_curves(_arm_url(work, sim.arms[0]), sim.rounds, truth, seed=sim.seed)
    result = {"plan": {**asdict(sim)}, "hidden": hidden, "rounds": rows, "curves": curves}
    (work / "simulation.json").write_text(json.dumps(result, indent=1, default=float))
    from flows.simulate_report import write_simulation_report

    text = write_simulation_report(result, work)
    create_markdown_artifact(key="pipstc-simulation", markdown=text, description=f"simulation of {store}")
    get_run_logger().info("simulation report: %s", work / "simulation.md")
    return {"report": str(work / "simulation.md"), "rounds": len(rows)}


def rows_frame(result: dict[str, Any]) -> pd.DataFrame:
    """The per-round rows of a simulation result as a frame."""
    return pd.DataFrame(result["rounds"])
