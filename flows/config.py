"""Configuration of an STC run: the round settings, composing the training settings, written beside every round.

:class:`STCConfig` holds what a round decides (curriculum, crops, pool labeling, review) and composes
:class:`pipnet_core.config.TrainConfig` for everything training needs, so every training setting
(weight decay, augmentation, device, ...) can be set per round and is written to the round's
``config.json``. Defaults follow the official PIPNet GSSL setting (docs/algorithm.md sections 2 and
4): ResNet-18, 256 input, stride 32, 10 neighbours, 60 epochs, batch 16, Adam 1e-4, the 1.3
landmark-box crop. ``demo()`` and ``tiny()`` are smaller configurations of the same code for a
2-core machine.

In dicts and JSON files the training settings sit under ``"train"``; flat training keys
(``{"epochs": 30}``) are accepted too, as overrides and in config files of older stores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipnet_core.augment import AugmentConfig
from pipnet_core.config import TrainConfig
from pipnet_core.curriculum import CurriculumPolicy, create_policy

__all__ = ["RUNTIME_FIELDS", "ConfigConflict", "STCConfig", "config_changes", "merge_overrides", "round_config"]

if TYPE_CHECKING:
    from annotations.review.policy import ReviewPolicy

_TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
# Where a round runs, not what it computes: a rerun may change these without --force-config.
RUNTIME_FIELDS = frozenset({"dask_address", "max_workers", "num_workers", "device"})
# Settings a round derives itself when thresholds_from_reviews is on (flows.calibration): a rerun keeps
# the values the round started with, and a full config given again (the demo's, say) is no conflict.
DERIVED_FROM_REVIEWS = frozenset({"std_below", "cls2_below", "cls3_below"})


class ConfigConflict(ValueError):
    """A rerun of a round asks for values that differ from the config the round started with."""


def _train_from(value: Any) -> TrainConfig:
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, dict):
        return TrainConfig.from_dict(value)
    raise TypeError(f"train must be a TrainConfig or a dict of its fields, got {type(value).__name__}")


def _check_review_fields(cfg: Any) -> None:
    """Refuse review settings that make no sense when the config is made, not after a round has trained."""
    shares = {"review_budget": cfg.review_budget, "audit_share": cfg.audit_share, "max_gross_rate": cfg.max_gross_rate}
    for name, value in shares.items():
        if not 0 <= value <= 1:
            raise ValueError(f"STC config {name}={value!r}: must be a share in [0, 1]")
    for name in ("audit_nme", "gross_nme"):
        if not getattr(cfg, name) > 0:
            raise ValueError(f"STC config {name}={getattr(cfg, name)!r}: must be an NME above 0")
    if cfg.audit_min < 0 or cfg.recalibrate_min_faces < 0:
        raise ValueError("STC config audit_min and recalibrate_min_faces: must be counts >= 0")
    if cfg.routing not in ("threshold", "round0-shares"):
        raise ValueError(f"STC config routing={cfg.routing!r}: use threshold or round0-shares")
    if cfg.cross_fit and cfg.schedule == "stld":
        raise ValueError("STC config cross_fit: for one-stage schedules (confidence, paper, plain), not stld")
    if cfg.reselect_skipped_after is not None and cfg.reselect_skipped_after < 1:
        raise ValueError(
            f"STC config reselect_skipped_after={cfg.reselect_skipped_after!r}: use a number of rounds >= 1, or null"
            " (a skipped face is never selected again)"
        )


@dataclass(frozen=True)
class STCConfig:
    # --- training (pipnet_core.config.TrainConfig): model, optimiser, epochs, augmentation, device, seed.
    # A round trains with seed train.seed + k and, when it warm-starts, init_from = the last round's model.
    train: TrainConfig = field(default_factory=TrainConfig)
    # Round 0 (supervised, the reference every later round is judged against) trains this many epochs,
    # with the milestones scaled alike; None: train.epochs. Round 0 should be trained to convergence
    # (bench/RESULTS.md: its holdout NME still fell 6 % over the last quarter of 120 epochs), while
    # warm-started rounds only fine-tune.
    round0_epochs: int | None = None
    crop_scale: float = 1.3  # GSSL 300W crop: landmark box x1.3 (docs/algorithm.md section 3.3)
    # --- the curriculum (pipnet_core.curriculum)
    # paper | confidence | plain | stld. pipstc's default is its own confidence-routed schedule, declared in
    # bench/RESULTS.md before the self-training benchmark ran (the benchmark's targets apply to it).
    schedule: str = "confidence"
    warm_start: bool | None = None  # None: the schedule's own choice (paper: from scratch); STLD has its own lineage
    std_below: float = 0.05  # confidence schedule thresholds, predicted NME
    cls2_below: float = 0.10
    cls3_below: float = 0.15
    # How the confidence schedule routes from round 2 on: "threshold" (the thresholds above, every round) or
    # "round0-shares" (by rank of predicted NME, each level keeping the share round 0's labeling gave it: the
    # remedy for confidence inflated on pool faces the model has trained on, bench/RESULTS.md issue 13).
    routing: str = "threshold"
    # Two-fold cross pseudo-labeling (one-stage schedules): from round 1 on, the train step also trains two
    # fold models, each on people's labels plus the pseudo-labels of one half of the pool, and each half is
    # labeled (and its confidence predicted) by the fold model that never trained on it. The round's own
    # model (evaluation, export, predict) still trains on everything. ~2.25x a round's training time.
    cross_fit: bool = False
    # STLD (pipnet_core.curriculum.STLDSchedule). "cpu": three rounds sized for a 2-core machine (adapted:
    # pretraining + fine-tuning; shrink p 2.4 at weight 0.1 on the second head set; fine targets p 1, weight 1
    # on the main heads); "full": the release's four rounds (p 2.4 w 0.1, p 1.6 w 1, p 1 w 1). Its pretraining
    # updates are E // 5 epochs as released, but at least 2 (adapted: E // 5 of a small E is 0 or 1).
    stld_schedule: str = "cpu"
    stld_oversample: int = 100  # os_num of the release's ResNet-18 configs: people's labels repeated up to it
    # --- pool labeling
    shard_size: int = 256  # faces per shard task
    max_workers: int = 2  # bounded thread runner: Prefect's default one is unbounded
    dask_address: str | None = None  # an existing Dask scheduler, e.g. tcp://10.0.0.5:8786
    # auto: torch CUDA with batches of 256 on a GPU; ONNX Runtime on a CPU (~90% of the FMA peak vs ~50% for
    # torch eager, docs/speed.md section 3). "onnx" or "torch" to force one.
    backend: str = "auto"
    flip_tta: bool = True  # flip disagreement is one of the confidence signals
    # --- review (annotations/review/candidates.py and audit.py)
    review_budget: float = 0.05  # share of the pool sent to people per round, all pushes of the round together
    review_project: str = "pipstc review"
    audit_share: float = 0.2  # share of the budget drawn at random, not by confidence: the pool's quality, unbiased
    audit_min: int = 20  # fewest audit faces where budget and pool allow: below ~20 the interval spans +-20 points
    audit_seed: int | None = None  # seed of the audit draw (recorded in audit.json); None: train.seed
    audit_nme: float = 0.08  # the report estimates the share of the pool's pseudo-labels under this NME
    reselect_skipped_after: int | None = 2  # rounds after a skip before the face may be selected again; None: never
    # --- recalibration on reviewed pool faces (flows/calibration.py)
    recalibrate: bool = True  # refit the confidence model on reviewed pool faces (+ the holdout's calibration part)
    recalibrate_min_faces: int = 20  # fewer reviewed pool faces: keep the holdout's fit and the thresholds
    thresholds_from_reviews: bool = True  # std/cls2/cls3_below from reviewed faces, into the next round's config
    gross_nme: float = 0.10  # real NME of a gross error at level std (FR@0.1's failure); cls2 2x, cls3 3x that
    max_gross_rate: float = 0.05  # a level's threshold admits at most this (weighted) share of gross errors

    def __post_init__(self) -> None:
        _check_review_fields(self)

    @classmethod
    def demo(cls, **overrides: Any) -> STCConfig:
        """The README demo: the benchmark's model (bench/RESULTS.md: a narrow ResNet-18 at 128 px, grid 8 with
        stride 16, the most accuracy per CPU minute of the models measured) so three rounds fit minutes.

        Round 0 trains 80 epochs, the later (warm-started) rounds 15. lr 1e-3 rather than the official
        1e-4: from random init (no ImageNet file here) 1e-4 barely moves a small net (bench/RESULTS.md,
        the trade-off table).
        """
        train = dict(base_width=16, input_size=128, net_stride=16, epochs=15, milestones=(10, 13), batch_size=16,
                     lr=1e-3)  # fmt: skip
        return cls().replace(**train, round0_epochs=80).replace(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> STCConfig:
        """Tests: seconds per round."""
        train = dict(base_width=8, input_size=64, net_stride=16, epochs=2, milestones=(1,), batch_size=8, lr=1e-3,
                     num_workers=0)  # fmt: skip
        return cls().replace(**train, shard_size=16, flip_tta=False, backend="torch").replace(**overrides)

    def replace(self, **overrides: Any) -> STCConfig:
        """A copy with ``overrides``; training fields may be given flat (``epochs=30``) or as ``train=``."""
        train = self.train
        if "train" in overrides:
            train = _train_from(overrides.pop("train"))
        flat = {k: overrides.pop(k) for k in list(overrides) if k in _TRAIN_FIELDS}
        if flat:
            if "milestones" in flat:
                flat["milestones"] = tuple(int(m) for m in flat["milestones"])
            if isinstance(flat.get("augment"), dict):
                flat["augment"] = AugmentConfig(**flat["augment"])
            train = dataclasses.replace(train, **flat)
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown STC config field(s) {unknown}; round fields: {sorted(known - {'train'})}, "
                f"training fields: {sorted(_TRAIN_FIELDS)}"
            )
        return dataclasses.replace(self, train=train, **overrides)

    def with_overrides(self, overrides: dict[str, Any] | None) -> STCConfig:
        """A copy with ``overrides`` applied on top: flat training keys, or a partial ``"train"`` dict.

        Unlike :meth:`replace` (and :meth:`from_dict`), a ``"train"`` dict here overrides only the
        training fields it names; the others keep this config's values.
        """
        flat = dict(overrides or {})
        train = flat.pop("train", None)
        if isinstance(train, TrainConfig):
            train = train.to_dict()
        if train is not None and not isinstance(train, dict):
            raise TypeError(f"train overrides must be a dict of training fields, got {type(train).__name__}")
        return self.replace(**{**(train or {}), **flat})

    def flat(self) -> dict[str, Any]:
        """Every setting under its own name (training fields flat), as plain JSON data."""
        d = self.to_dict()
        return {**d.pop("train"), **d}

    def policy(self) -> CurriculumPolicy:
        """The curriculum policy of :attr:`schedule` with this config's thresholds."""
        if self.schedule == "confidence":
            return create_policy(
                "confidence", std_below=self.std_below, cls2_below=self.cls2_below, cls3_below=self.cls3_below
            )
        if self.schedule == "stld":
            return create_policy("stld", schedule=self.stld_schedule, oversample=self.stld_oversample)
        return create_policy(self.schedule)

    def review_policy(self) -> ReviewPolicy:
        """How the round spends its review budget (:class:`annotations.review.policy.ReviewPolicy`)."""
        from annotations.review.policy import ReviewPolicy  # the review package is heavy; configs stay light

        return ReviewPolicy(
            budget=self.review_budget,
            audit_share=self.audit_share,
            audit_min=self.audit_min,
            reselect_skipped_after=self.reselect_skipped_after,
            seed=self.train.seed if self.audit_seed is None else self.audit_seed,
        )

    def warm_starts(self) -> bool:
        """Whether rounds k >= 1 start from round k-1's weights (:attr:`warm_start`, else the schedule's choice)."""
        return (not self.policy().reinitialise) if self.warm_start is None else self.warm_start

    def round_train(self, k: int, init_from: str | None = None) -> TrainConfig:
        """The training settings of round k: seed ``train.seed + k``; ``init_from`` when warm-starting;
        round 0's own length (:attr:`round0_epochs`, milestones scaled) when set."""
        changes: dict[str, Any] = {"seed": self.train.seed + k}
        if k == 0 and self.round0_epochs is not None and self.round0_epochs != self.train.epochs:
            ratio = self.round0_epochs / self.train.epochs
            changes["epochs"] = int(self.round0_epochs)
            changes["milestones"] = tuple(max(1, int(round(m * ratio))) for m in self.train.milestones)
        if init_from is not None:
            changes["init_from"] = init_from
        return dataclasses.replace(self.train, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "train"}
        return {"train": self.train.to_dict(), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> STCConfig:
        """Inverse of :meth:`to_dict`; flat training keys are accepted, unknown keys refused by name."""
        return cls().replace(**dict(d))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def merge_overrides(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Override dicts combined, later layers winning; partial ``"train"`` dicts are merged, not replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key == "train" and isinstance(value, dict):
                out["train"] = {**out.get("train", {}), **value}
            else:
                out[key] = value
    return out


def config_changes(before: STCConfig, after: STCConfig) -> dict[str, tuple[Any, Any]]:
    """Settings that differ: name -> (before, after), training fields under their flat names."""
    a, b = before.flat(), after.flat()
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def round_config(
    k: int,
    saved: dict[str, Any] | None,
    overrides: dict[str, Any] | None,
    base: STCConfig | None = None,
    force: bool = False,
) -> tuple[STCConfig, str | None]:
    """The config round k runs with, and a note for the log when it is not simply the one asked for.

    A new round (nothing ``saved``) runs ``base`` (default: the defaults) with ``overrides``. A rerun
    resumes with the saved config; explicit ``overrides`` that change it are refused unless ``force``
    (then they replace it for the steps not yet done), except settings of where it runs
    (:data:`RUNTIME_FIELDS`), which a rerun may change freely.

    Raises:
        ConfigConflict: an override differs from the saved config and ``force`` is false.
    """
    if saved is None:
        return (base or STCConfig()).with_overrides(overrides), None
    before = STCConfig.from_dict(saved)
    if before.thresholds_from_reviews and overrides:
        overrides = {k: v for k, v in overrides.items() if k not in DERIVED_FROM_REVIEWS}
    wanted = before.with_overrides(overrides)
    changes = config_changes(before, wanted)
    if not changes:
        return before, f"round {k}: resuming with the config saved when the round started (config.json)"
    shown = ", ".join(f"{n}: saved {a!r}, asked {b!r}" for n, (a, b) in changes.items())
    conflicts = sorted(set(changes) - RUNTIME_FIELDS)
    if conflicts and not force:
        raise ConfigConflict(
            f"round {k} was started with another config ({shown}); rerun without these values to resume it "
            "with its saved config, or pass --force-config (flow parameter force_config=True) to use them "
            "for the steps it has not completed yet"
        )
    return wanted, f"round {k}: config changed on rerun ({shown}); completed steps keep their results"
