"""STLD as a schedule: the shrink loss, which head set each face feeds, the weight ramp, the pretraining lineage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loss import TABLE, _landmarks, _random_outputs
from tiny_faces import draw_faces

from annotations.store import Store
from flows.config import STCConfig
from flows.training import PRETRAIN_CHECKPOINT, stage_config, stage_start
from pipnet_core.curriculum import STLD_SCHEDULES, STLDSchedule, create_policy
from pipnet_core.data import FaceDataset
from pipnet_core.loss import pip_loss, shrink_loss, targets_to_torch
from pipnet_core.schemes import get_scheme
from pipnet_core.stages import Stage, Task, describe_stage, stage_samples
from pipnet_core.targets import HEAD_AUX, HEAD_MAIN, SampleTasks, build_targets
from pipnet_core.train import TrainConfig, read_checkpoint_meta, train

SCHEME = get_scheme("300w")
SOURCES = ["human"] * 3 + ["corrected"] + ["pseudo"] * 5  # a round's training set: 4 people's labels, 5 pseudo
LEVELS = ["std"] * 9


def _tasks(head: list[int], shrink: list[float], weight: list[float], regress: list[bool] | None = None) -> SampleTasks:
    regress = [True] * len(head) if regress is None else regress
    return SampleTasks(np.array(head), np.array(regress), np.array(shrink, np.float32), np.array(weight, np.float32))


# --- the shrink loss -------------------------------------------------------------------------------


def test_shrink_loss_with_p_one_is_l1_and_shrinks_small_errors_above() -> None:
    err = torch.linspace(-0.9, 0.9, 19, dtype=torch.float64)
    torch.testing.assert_close(shrink_loss(err, torch.tensor(1.0, dtype=torch.float64)), err.abs(), rtol=0, atol=1e-15)
    p = torch.tensor(2.4, dtype=torch.float64)
    torch.testing.assert_close(shrink_loss(err, p), err.abs() ** 2.4 / 2.4)
    # below |e| = 1 the gradient |e|^(p-1) of p > 1 is smaller than L1's 1: small disagreements barely push
    e = torch.tensor([0.05, 0.5], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(shrink_loss(e, p).sum(), e)
    assert grad[0] < 0.02 and grad[1] < 1 and grad[0] < grad[1]


@pytest.mark.parametrize("p", [1.0, 1.6, 2.4])
def test_shrink_loss_gradients_are_finite_near_zero(p: float) -> None:
    e = torch.tensor([0.0, 1e-30, -1e-30, 1e-12, -1e-7, 1e-3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(shrink_loss(e, torch.full_like(e, p)).sum(), e)
    assert torch.isfinite(grad).all(), grad
    assert grad[0] == 0 or p == 1.0  # at 0 exactly: no push
    assert grad.abs().max() <= 1.0


def test_pip_loss_with_all_main_p_one_equals_the_plain_loss() -> None:
    lm = _landmarks(4, seed=3)
    out = _random_outputs(4, seed=3)
    plain, parts = pip_loss(out, targets_to_torch(build_targets(lm, ["std"] * 4, TABLE.nb, 8)))
    routed = targets_to_torch(build_targets(lm, ["std"] * 4, TABLE.nb, 8, tasks=_tasks([0] * 4, [1.0] * 4, [1.0] * 4)))
    again, parts2 = pip_loss(out, routed, aux=_random_outputs(4, seed=9))
    torch.testing.assert_close(plain, again)
    assert parts["aux"] == parts2["aux"] == 0.0


def test_shrink_exponent_and_weight_enter_the_regression_terms() -> None:
    lm = _landmarks(2, seed=1)
    out = _random_outputs(2, seed=1)
    t = targets_to_torch(build_targets(lm, ["std"] * 2, TABLE.nb, 8, tasks=_tasks([0, 0], [2.0, 2.0], [0.5, 0.5])))
    _, parts = pip_loss(out, t)
    cell = torch.from_numpy(build_targets(lm, ["std"] * 2, TABLE.nb, 8).cell)
    pred_x = out.x.detach().reshape(2, 68, -1).gather(2, cell[..., None]).squeeze(2)
    expect = 0.5 * ((pred_x - t.x) ** 2 / 2).mean()  # weight 0.5 x |e|^2 / 2, averaged over the 2 x 68 entries
    assert parts["x"] == pytest.approx(float(expect), rel=1e-5)


# --- which heads each sample feeds ------------------------------------------------------------------


def test_aux_samples_feed_only_the_second_head_set_and_humans_only_the_main() -> None:
    lm = _landmarks(2, seed=5)
    tasks = _tasks([HEAD_MAIN, HEAD_AUX], [1.0, 2.4], [1.0, 0.1], regress=[True, True])
    t = targets_to_torch(build_targets(lm, ["std", "cls3"], TABLE.nb, 8, tasks=tasks))
    main, aux = _random_outputs(2, seed=5), _random_outputs(2, seed=6)
    total, parts = pip_loss(main, t, aux=aux)
    grads = torch.autograd.grad(total, [*main, *aux])
    g_main, g_aux = grads[:7], grads[7:]
    for g in g_main:
        assert float(g[1].abs().sum()) == 0.0  # the pseudo face sends nothing to the main heads
    for g in g_aux:
        assert float(g[0].abs().sum()) == 0.0  # the human face sends nothing to the second set
    assert float(g_aux[0][1].abs().sum()) == 0.0  # a cls3 target: the aux fine score map is not supervised...
    assert float(g_aux[6][1].abs().sum()) > 0  # ...its 2x2 map is
    assert float(g_aux[1][1].abs().sum()) > 0 and float(g_aux[3][1].abs().sum()) > 0  # offsets, neighbours regress
    assert parts["aux"] > 0


def test_the_pseudo_weight_scales_the_aux_term_linearly() -> None:
    lm = _landmarks(2, seed=7)
    main, aux = _random_outputs(2, seed=7), _random_outputs(2, seed=8)

    def aux_part(w: float) -> float:
        tasks = _tasks([HEAD_MAIN, HEAD_AUX], [1.0, 2.4], [1.0, w])
        return pip_loss(main, targets_to_torch(build_targets(lm, ["std", "cls3"], TABLE.nb, 8, tasks=tasks)), aux=aux)[
            1
        ]["aux"]

    assert aux_part(0.1) == pytest.approx(0.1 * aux_part(1.0), rel=1e-5)


def test_stld_stages_route_every_face() -> None:
    policy = STLDSchedule(schedule="full", oversample=6)
    (sup,) = policy.stages(0)
    chosen = stage_samples(sup, SOURCES[:4], LEVELS[:4])
    assert chosen.index.tolist() == [0, 1, 2, 3, 0, 1]  # the release's oversampling: repeat, then cut to os_num
    assert set(chosen.tasks.head) == {HEAD_MAIN}

    pretrain, fine = policy.stages(1)
    pp = stage_samples(pretrain, SOURCES, LEVELS)
    assert pp.index.tolist() == [4, 5, 6, 7, 8]  # pseudo pretraining: the pseudo-labels only, the full task
    assert set(pp.levels) == {"std"} and set(pp.tasks.head) == {HEAD_MAIN} and pp.tasks.regress.all()
    ft = stage_samples(fine, SOURCES, LEVELS)
    assert ft.index.tolist() == [0, 1, 2, 3, 0, 1]  # round 1 fine-tunes on people's labels only

    _, fine2 = policy.stages(2, lineage=True)
    ft2 = stage_samples(fine2, SOURCES, LEVELS)
    human, pseudo = ft2.index < 4, ft2.index >= 4
    assert (ft2.tasks.head[human] == HEAD_MAIN).all() and (ft2.tasks.head[pseudo] == HEAD_AUX).all()
    assert {ft2.levels[i] for i in np.flatnonzero(pseudo)} == {"cls3"} and ft2.tasks.regress[pseudo].all()
    assert set(ft2.tasks.shrink[pseudo]) == {np.float32(2.4)} and set(ft2.tasks.shrink[human]) == {1.0}
    assert fine2.uses_aux and not pretrain.uses_aux

    _, last = policy.stages(4, lineage=True)
    ft4 = stage_samples(last, SOURCES, LEVELS)
    assert ft4.index.tolist() == list(range(9))  # no oversampling in the last round
    assert set(ft4.tasks.head) == {HEAD_MAIN} and set(ft4.tasks.shrink) == {1.0} and not last.uses_aux
    text = describe_stage(fine2.name, 60, ft2.groups)
    assert text == "fine-tune 60 epochs: 6 human (std, 4 faces repeated), 5 pseudo (aux cls3, p 2.4, w 0.1)"


def test_one_stage_schedules_keep_each_pseudo_labels_own_level() -> None:
    (stage,) = create_policy("paper").stages(1)
    chosen = stage_samples(stage, ["human", "pseudo", "pseudo"], ["std", "cls3", "cls2"])
    assert chosen.levels == ["std", "cls3", "cls2"] and set(chosen.tasks.head) == {HEAD_MAIN}
    assert chosen.tasks.regress.tolist() == [True, False, False] and stage.start == "round"
    assert create_policy("paper").average_flip and not create_policy("stld").average_flip


def test_a_dataset_routed_to_the_aux_heads_needs_a_model_with_them(tmp_path: Path) -> None:
    paths, boxes, lm = draw_faces(tmp_path, count=2, size=64)
    ds = FaceDataset(paths, boxes, lm, input_size=64, tasks=_tasks([0, 1], [1.0, 2.4], [1.0, 0.1]))
    cfg = TrainConfig(epochs=1, batch_size=2, input_size=64, base_width=8, num_workers=0, augment=None)
    with pytest.raises(ValueError, match="aux_heads"):
        train(cfg, ds, SCHEME, tmp_path / "m.pt", progress=False)


# --- the weight ramp and the schedule ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "weights", "exponents", "heads"),
    [
        ("cpu", [None, 0.1, 1.0], [None, 2.4, 1.0], [None, "aux", "main"]),
        ("full", [None, 0.1, 1.0, 1.0], [None, 2.4, 1.6, 1.0], [None, "aux", "aux", "main"]),
    ],
)
def test_weight_and_exponent_ramp_per_round(schedule: str, weights: list, exponents: list, heads: list) -> None:
    policy = STLDSchedule(schedule=schedule)
    assert policy.rounds == len(weights) == len(STLD_SCHEDULES[schedule])
    tasks = [policy.stages(r, lineage=r > 1)[1].pseudo for r in range(1, policy.rounds + 1)]
    assert [t and t.weight for t in tasks] == weights
    assert [t and t.shrink for t in tasks] == exponents
    assert [t and t.head for t in tasks] == heads
    # rounds past the schedule repeat its last (fine) round, without oversampling
    assert policy.stages(policy.rounds + 2, lineage=True)[1] == policy.stages(policy.rounds, lineage=True)[1]
    assert [policy.stages(r, lineage=r > 1)[1].oversample for r in range(1, policy.rounds + 1)][-1] == 0
    assert set(policy.levels(1, np.array([0.01, 0.9, np.nan]))) == {"std"}  # no selection


def test_stld_config_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown STLD schedule 'tiny'"):
        STCConfig(schedule="stld", stld_schedule="tiny").policy()
    with pytest.raises(ValueError, match="shrink"):
        Task(shrink=0.5)
    with pytest.raises(ValueError, match="trains on nothing"):
        Stage("empty", human=None, pseudo=None)


# --- the pretraining lineage -------------------------------------------------------------------------


def test_pretraining_epochs_and_starts() -> None:
    policy = STLDSchedule()
    first, _ = policy.stages(1)
    assert first.start == "fresh" and first.epochs(60, (30, 50)) == (60, (30, 50))
    later, fine = policy.stages(2, lineage=True)
    assert later.start == "pretrain" and later.checkpoint == PRETRAIN_CHECKPOINT
    assert later.epochs(60, (40, 50)) == (12, (8, 10))  # num_epochs // 5, milestones // 5 (train_stld.py)
    assert later.epochs(6, (3, 4)) == (2, ())  # at least 2 epochs; milestones that fall to 0 are dropped
    assert later.epochs(10, (6, 8)) == (2, (1,))
    assert fine.start == "previous" and fine.checkpoint == "model.pt"
    # a store that ran another schedule before has no lineage: pretraining starts one (fresh, full length)
    assert policy.stages(2, lineage=False)[0].start == "fresh"


def test_round_k_pretrains_from_round_k_minus_1s_pretraining_weights(tmp_path: Path) -> None:
    store = Store.create(str(tmp_path / "store"), SCHEME)
    paths, boxes, lm = draw_faces(tmp_path / "faces", count=4, size=64)
    cfg = STCConfig.tiny(schedule="stld", lr=1e-3)
    pretrain1, _ = cfg.policy().stages(1)
    t1 = stage_config(cfg, 1, pretrain1, stage_start(store, 1, pretrain1, cfg, previous=None))
    assert t1.init_from is None and t1.epochs == cfg.train.epochs
    round1 = Path(store.round_path(1)) / PRETRAIN_CHECKPOINT
    train(t1, FaceDataset(paths, boxes, lm, input_size=64), SCHEME, round1, progress=False)

    pretrain2, fine2 = cfg.policy().stages(2, lineage=True)
    start = stage_start(store, 2, pretrain2, cfg, previous=None)
    assert start == str(round1)
    t2 = dataclasses.replace(stage_config(cfg, 2, pretrain2, start), lr=0.0)  # lr 0: the start's weights stay
    assert t2.init_from == str(round1) and t2.epochs == 2 and not t2.aux_heads
    round2 = Path(store.round_path(2)) / PRETRAIN_CHECKPOINT
    train(t2, FaceDataset(paths, boxes, lm, input_size=64), SCHEME, round2, progress=False)
    w1, w2 = (torch.load(p, weights_only=True)["model"] for p in (round1, round2))
    for name in ("conv1.weight", "layer4.1.conv2.weight", "cls_layer.weight", "nb_y_layer.bias"):
        assert torch.equal(w1[name], w2[name]), name
    assert read_checkpoint_meta(round2).config.init_from == str(round1)

    # fine-tuning starts from this round's pretraining and adds a fresh second head set
    t3 = stage_config(cfg, 2, fine2, stage_start(store, 2, fine2, cfg, previous=str(round2)))
    assert t3.init_from == str(round2) and t3.aux_heads
    out = train(dataclasses.replace(t3, lr=0.0), FaceDataset(paths, boxes, lm, input_size=64), SCHEME,
                tmp_path / "ft.pt", progress=False)  # fmt: skip
    w3 = torch.load(out, weights_only=True)["model"]
    assert torch.equal(w3["cls_layer.weight"], w2["cls_layer.weight"]) and "aux_cls_layer.weight" in w3

    with pytest.raises(FileNotFoundError, match="pretrain.pt"):
        stage_start(store, 4, pretrain2, cfg, previous=None)  # round 3 never pretrained


# --- checkpoints with the second head set ------------------------------------------------------------


def _aux_model(seed: int = 0) -> torch.nn.Module:
    from test_export import _busy_model

    from pipnet_core.model import AUX_HEADS, create_model

    plain = _busy_model(seed)
    model = create_model(19, num_nb=5, base_width=8, input_size=128, aux_heads=True)
    model.load_state_dict({**model.state_dict(), **plain.state_dict()})
    for name in AUX_HEADS:  # the second set differs from the first, so mixing them up would show
        torch.nn.init.normal_(getattr(model, name).weight, std=0.3)
    return model.eval(), plain


def test_the_second_head_set_changes_no_prediction_and_no_export() -> None:
    import onnx
    import onnxruntime as ort

    from pipnet_core.export import OUTPUT_NAMES, onnx_bytes

    model, plain = _aux_model()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        main, aux = model(x, with_aux=True)
        for a, b, c in zip(model(x), plain(x), main, strict=True):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, c)
        assert not torch.allclose(aux.cls, main.cls) and aux.cls3.shape == main.cls3.shape
    with pytest.raises(ValueError, match="aux_heads"):
        plain(x, with_aux=True)
    blob = onnx_bytes(model)
    graph = onnx.load_from_string(blob).graph
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    assert not [i.name for i in graph.initializer if "aux" in i.name]
    got = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got[0], main.cls.numpy(), rtol=1e-4, atol=1e-4)


def test_official_weights_load_into_a_model_with_the_second_set(tmp_path: Path) -> None:
    from pipnet_core.model import create_model, load_pipnet_weights

    official = create_model(19, num_nb=5, base_width=8, input_size=128).state_dict()  # official names only
    assert not [k for k in official if k.startswith("aux_")]
    torch.save(official, tmp_path / "epoch59.pth")
    model = load_pipnet_weights(create_model(19, num_nb=5, base_width=8, input_size=128, aux_heads=True),
                                tmp_path / "epoch59.pth")  # fmt: skip
    assert torch.equal(model.cls_layer.weight, official["cls_layer.weight"])


def test_a_checkpoint_with_the_second_set_loads_and_predicts_like_any_other(tmp_path: Path) -> None:
    from pipnet_core.predict import Predictor
    from pipnet_core.train import load_checkpoint

    paths, boxes, lm = draw_faces(tmp_path / "faces", count=4, size=64)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3, input_size=64, net_stride=16, base_width=8, num_workers=0,
                      augment=None, aux_heads=True)  # fmt: skip
    tasks = _tasks([0, 0, 1, 1], [1.0, 1.0, 2.4, 2.4], [1.0, 1.0, 0.1, 0.1], regress=[True] * 4)
    ds = FaceDataset(paths, boxes, lm, levels=["std", "std", "cls3", "cls3"], input_size=64, tasks=tasks)
    ckpt = train(cfg, ds, SCHEME, tmp_path / "model.pt", progress=False)
    model, meta = load_checkpoint(ckpt)
    assert model.aux_heads and meta.config.aux_heads
    assert "aux_nb_x_layer.weight" in torch.load(ckpt, weights_only=True)["model"]
    onnx_pred = Predictor.from_checkpoint(ckpt, backend="onnx").predict(paths, boxes)
    torch_pred = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes)
    np.testing.assert_allclose(onnx_pred.landmarks, torch_pred.landmarks, atol=1e-3)
    assert np.isfinite(onnx_pred.landmarks).all() and np.isfinite(onnx_pred.face_confidence).all()

    # STLD's label is the plain prediction; flip still feeds the confidence
    plain = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes, flip_tta=True, average_flip=False)
    averaged = Predictor.from_checkpoint(ckpt, backend="torch").predict(paths, boxes, flip_tta=True)
    np.testing.assert_allclose(plain.landmarks, torch_pred.landmarks, atol=1e-6)
    assert "flip_disagreement" in plain.signals and np.isfinite(plain.signals["flip_disagreement"]).all()
    assert not np.allclose(averaged.landmarks, plain.landmarks)


def test_sample_tasks_travel_with_the_sample_list_to_ddp_workers(tmp_path: Path) -> None:
    paths, boxes, lm = draw_faces(tmp_path, count=3, size=64)
    tasks = _tasks([0, 1, 1], [1.0, 2.4, 1.6], [1.0, 0.1, 1.0], regress=[True, True, False])
    ds = FaceDataset(paths, boxes, lm, levels=["std", "cls3", "cls2"], input_size=64, tasks=tasks)
    back = FaceDataset.from_npz(ds.to_npz(tmp_path / "samples.npz"), input_size=64)
    for name in ("head", "regress", "shrink", "weight"):
        np.testing.assert_array_equal(getattr(back.tasks, name), getattr(tasks, name))
    assert back.uses_aux_heads() and back.levels == ["std", "cls3", "cls2"]


def test_a_checkpoint_from_before_aux_heads_existed_still_resumes(tmp_path: Path) -> None:
    paths, boxes, lm = draw_faces(tmp_path, count=2, size=64)
    cfg = TrainConfig(epochs=2, batch_size=2, input_size=64, net_stride=16, base_width=8, num_workers=0, augment=None)
    ds = FaceDataset(paths, boxes, lm, input_size=64)
    path = train(dataclasses.replace(cfg, epochs=1), ds, SCHEME, tmp_path / "old.pt", progress=False)
    old = torch.load(path, weights_only=True)
    del old["config"]["aux_heads"]  # as written before the field existed
    torch.save(old, path)
    train(cfg, ds, SCHEME, path, progress=False)  # resumes: a missing field counts as its default
    assert read_checkpoint_meta(path).epoch == 2
