"""STLD end to end through ``pipstc run --schedule stld`` on a real Prefect API, on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from annotations.ingest.crops import inference_crop_boxes
from annotations.store import Store
from flows.cli import main
from flows.config import STCConfig
from flows.evaluation import round_mapping
from flows.stc import ROUND_STEPS
from pipnet_core.predict import Predictor
from pipnet_core.train import read_checkpoint_meta


def _meta(store: Store, k: int, name: str):  # noqa: ANN202
    path = Path(store.round_path(k)) / name
    return read_checkpoint_meta(path) if path.exists() else None


def test_stld_run_pretrains_in_a_lineage_and_shrinks_on_the_second_head_set(
    tiny_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = STCConfig.tiny(stld_oversample=32, flip_tta=True)  # 24 people's labels, repeated up to 32
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    assert main(["run", tiny_store, "--schedule", "stld", "--config", str(tmp_path / "cfg.json")]) == 0
    printed = capsys.readouterr().out

    store = Store.open(tiny_store)
    assert store.rounds() == [0, 1, 2, 3]  # the CPU-sized schedule: round 0 + three rounds
    pool = set(store.samples(split="pool")["sample_id"])
    for k in range(4):
        assert set(ROUND_STEPS) <= set(store.completed_steps(k))
        assert store.read_round_json(k, "config.json")["schedule"] == "stld"
        pseudo = store.pseudo_labels(k).frame
        assert set(pseudo["sample_id"]) == pool and set(pseudo["level"]) == {"std"}  # no selection, every face
    trained = {k: store.read_round_json(k, "training_set.json")["trained"] for k in range(4)}
    assert trained[0] == "train 2 epochs: 32 human (std, 24 faces repeated)"
    assert trained[1] == "pretrain 2 epochs: 24 pseudo (std); fine-tune 2 epochs: 32 human (std, 24 faces repeated)"
    assert trained[2].endswith("32 human (std, 24 faces repeated), 24 pseudo (aux cls3, p 2.4, w 0.1)")
    assert trained[3].endswith("fine-tune 2 epochs: 24 human (std), 24 pseudo (std)")  # last round: main heads
    for k in range(1, 4):
        assert f"round {k}: {trained[k]}" in printed  # the report `pipstc run` prints names what each round trained

    # the pretraining lineage: round k's pretraining starts from round k-1's, fine-tuning from this round's
    assert _meta(store, 0, "pretrain.pt") is None
    pretrain = {k: _meta(store, k, "pretrain.pt") for k in (1, 2, 3)}
    assert pretrain[1].config.init_from is None
    for k in (2, 3):
        assert pretrain[k].config.init_from == str(Path(store.round_path(k - 1)) / "pretrain.pt")
        assert pretrain[k].epoch == 2  # E // 5, at least 2
    models = {k: _meta(store, k, "model.pt") for k in (1, 2, 3)}
    for k in (1, 2, 3):
        assert models[k].config.init_from == str(Path(store.round_path(k)) / "pretrain.pt")
        assert not pretrain[k].config.aux_heads
    assert [models[k].config.aux_heads for k in (1, 2, 3)] == [False, True, False]

    # round 2's model has the second head set; its pseudo-labels are the main heads' plain prediction
    samples = store.samples().set_index("sample_id").loc[sorted(pool)].reset_index()
    boxes = inference_crop_boxes(samples, round_mapping(store, 2), cfg.crop_scale)
    plain = Predictor.from_checkpoint(Path(store.round_path(2)) / "model.pt", backend="torch").predict(
        samples["image_uri"].tolist(), boxes
    )
    labels = store.pseudo_labels(2)
    order = np.argsort(labels.frame["sample_id"].to_numpy())
    np.testing.assert_allclose(labels.landmarks[order], plain.landmarks, atol=1e-3)
    # the confidence still ranks faces for people: every round sends some to review
    assert all(store.completed_steps(k)["review"]["selected"] >= 1 for k in range(4))
    metrics = json.loads(store.read_round_file(3, "metrics.json"))
    assert metrics["faces"] + metrics["calibration_faces"] == 12  # the holdout's evaluation + calibration parts
