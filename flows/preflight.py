"""What a round needs before its first step, checked in seconds: no model is loaded, no flow is started.

A round trains on people's labels (and the previous round's pseudo-labels), measures itself on the
human-labeled holdout and labels the pool; a precondition found missing after an hour of training
costs the hour. :func:`check_round` lists every unmet precondition of the steps still to run, each
as one :class:`~flows.errors.UserError` line; :func:`preflight_round` raises them together. Both the
CLI (``pipstc round`` / ``pipstc run``, before Prefect starts) and the ``stc-round`` flow (before its
first step writes anything) call it.

Checked: the config is readable and valid (fields, schedule, training settings);
round k-1 finished training, evaluating and labeling the pool (round k trains on its pseudo-labels
and may start from its model); there are human-labeled training faces and their images exist; the
holdout has human-labeled faces and their images exist; Dask pool labeling has its extra installed.
The checks of steps a resumed round already completed are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from annotations.store import Store, StoreError
from flows.config import STCConfig
from flows.errors import ConfigFileError, PreflightError, UserError, missing_extra

__all__ = ["MIN_HOLDOUT_FACES", "PREVIOUS_ROUND_STEPS", "check_round", "preflight_round", "read_config_file"]

# Evaluation measures the round on the holdout; with none there is no metric, no calibration, no report.
MIN_HOLDOUT_FACES = 1
# What round k takes from round k-1: its model (warm start), its calibration and its pseudo-labels.
PREVIOUS_ROUND_STEPS = ("train", "evaluate", "label_pool")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON file of STC config overrides (``--config``), as a dict.

    Raises:
        ConfigFileError: the file is missing, unreadable, not JSON, or not a JSON object.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigFileError(p, f"cannot read the config file ({e.strerror or e})", "check the path") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigFileError(
            p, f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})", "fix the JSON (an object of fields)"
        ) from None
    if not isinstance(data, dict):
        raise ConfigFileError(
            p, f"a config file is a JSON object of fields, got a {type(data).__name__}", 'write e.g. {"epochs": 30}'
        )
    return data


def _parse_config(config: dict[str, Any] | None, where: str) -> tuple[STCConfig | None, list[UserError]]:
    try:
        cfg = STCConfig.from_dict(config) if config else STCConfig()
        cfg.policy()  # an unknown schedule is refused here, not when round 1 starts
    except (ValueError, TypeError) as e:
        return None, [ConfigFileError(where, f"invalid config: {e}", "fix or remove the field named")]
    return cfg, []


def _check_config(store: Store, k: int, config: dict[str, Any] | None) -> tuple[STCConfig | None, list[UserError]]:
    """The config the round will run with (the saved one of a started round, else ``config``)."""
    where = f"{store.round_path(k)}/config.json"
    try:
        saved = store.read_round_json(k, "config.json", default=None)
    except (StoreError, ValueError) as e:
        return None, [ConfigFileError(where, f"unreadable ({e})", "restore it, or delete it to start the round anew")]
    cfg, problems = _parse_config(config, "config")
    if saved is None:
        return cfg, problems
    cfg, more = _parse_config(saved, where)
    return cfg, problems + more


def _check_previous(store: Store, k: int) -> list[UserError]:
    if k == 0:
        return []
    missing = [s for s in PREVIOUS_ROUND_STEPS if s not in store.completed_steps(k - 1)]
    if not missing:
        return []
    return [
        UserError(
            store.url,
            f"round {k} needs round {k - 1}'s model and pseudo-labels, but round {k - 1} has not completed "
            f"{', '.join(missing)}",
            f"run `pipstc round {store.url} {k - 1}` first (or `pipstc run {store.url}`)",
        )
    ]


def _missing_images(uris: list[str]) -> list[str]:
    """The local image files among ``uris`` that do not exist (object-store URIs are not checked here)."""
    local = [u.removeprefix("file://") for u in uris if "://" not in u or u.startswith("file://")]
    return [u for u in local if not os.path.isfile(u)]


def _images_problem(store: Store, what: str, uris: list[str]) -> list[UserError]:
    missing = _missing_images(uris)
    if not missing:
        return []
    return [
        UserError(
            missing[0],
            f"image not found ({len(missing)} of the {len(uris)} {what} images are missing)",
            f"put the images back where they were imported from; `pipstc export {store.url} OUT --format csv` "
            "lists every image path",
        )
    ]


def _check_training(store: Store, k: int) -> list[UserError]:
    from annotations.store.training import training_set

    data = training_set(store, k)
    people = sum(s in ("human", "corrected") for s in data.sources)
    if people == 0:
        return [
            UserError(
                store.url,
                f"no human-labeled training faces (round {k} trains on people's labels; the train split has none)",
                f"import labeled faces first: `pipstc import {store.url} FOLDER --format pts`",
            )
        ]
    return _images_problem(store, "training", data.image_uris)


def _check_holdout(store: Store) -> list[UserError]:
    hold = store.holdout()
    if len(hold) < MIN_HOLDOUT_FACES:
        unlabeled = len(store.samples(split="holdout"))
        return [
            UserError(
                store.url,
                f"no human-labeled holdout faces ({unlabeled} holdout samples, none with a human label): every round "
                "is measured on the holdout",
                f"import labeled faces for it: `pipstc import {store.url} FOLDER --format pts --split holdout`",
            )
        ]
    uris = store.samples().set_index("sample_id").loc[hold.frame["sample_id"], "image_uri"]
    return _images_problem(store, "holdout", [str(u) for u in uris])


def _check_dask(cfg: STCConfig) -> list[UserError]:
    if cfg.dask_address and importlib.util.find_spec("prefect_dask") is None:
        return [missing_extra(f"dask_address {cfg.dask_address}: pool labeling on Dask", "prefect-dask", "dask")]
    return []


def check_round(store_url: str, k: int, config: dict[str, Any] | None = None) -> list[UserError]:
    """Every unmet precondition of round ``k`` on ``store_url`` (empty: the round can start).

    Args:
        store_url: The store.
        k: The round (0: supervised).
        config: The STC config overrides the round is given (the saved config of a started round wins,
            as in :func:`flows.stc.resolve_config`).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        return [UserError("round", f"{k!r} is not a round number", "give an integer >= 0 (0 is the supervised round)")]
    store = Store.open(store_url)  # a missing or unreadable store is an error of its own (StoreError)
    cfg, problems = _check_config(store, k, config)
    problems += _check_previous(store, k)
    done = store.completed_steps(k)
    if "train" not in done:
        problems += _check_training(store, k)
    if "evaluate" not in done:
        problems += _check_holdout(store)
    if cfg is not None and "label_pool" not in done:
        problems += _check_dask(cfg)
    return problems


def preflight_round(store_url: str, k: int, config: dict[str, Any] | None = None) -> None:
    """Raise :class:`~flows.errors.PreflightError` listing every unmet precondition of round ``k``."""
    problems = check_round(store_url, k, config)
    if problems:
        raise PreflightError(problems)
