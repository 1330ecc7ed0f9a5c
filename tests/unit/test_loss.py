"""The masked PIPNet loss: init scale, equality with the plain loss, masking of curriculum levels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipnet_core.loss import BatchTargets, pip_loss, targets_to_torch
from pipnet_core.meanface import build_neighbour_table
from pipnet_core.model import PIPOutputs, create_model
from pipnet_core.schemes import get_scheme
from pipnet_core.targets import build_targets, encode_dense

SCHEME = get_scheme("300w")
TABLE = build_neighbour_table(SCHEME.meanface_array, 10)


def _landmarks(b: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return SCHEME.meanface_array[None] + rng.normal(0, 0.03, size=(b, SCHEME.num_landmarks, 2))


def _targets(lm: np.ndarray, levels: list[str], grid: int = 8) -> BatchTargets:
    return targets_to_torch(build_targets(lm, levels, TABLE.nb, grid))


def _random_outputs(b: int, n: int = 68, c: int = 10, s: int = 8, seed: int = 0) -> PIPOutputs:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    return PIPOutputs(
        r(b, n, s, s),
        r(b, n, s, s),
        r(b, n, s, s),
        r(b, c * n, s, s),
        r(b, c * n, s, s),
        r(b, n, s // 2, s // 2),
        r(b, n, s // 4, s // 4),
    )


def _plain_pip_loss(out: PIPOutputs, dense: dict[str, np.ndarray]) -> torch.Tensor:
    """The official supervised loss, written independently from dense maps (lib/functions.py)."""
    cls_t = torch.from_numpy(dense["cls"]).float()
    b, n, s, _ = cls_t.shape
    c = dense["nb_x"].shape[1] // n
    ids = cls_t.view(b, n, -1).argmax(2)  # the official code takes the GT cell from the one-hot map
    loss_cls = F.mse_loss(out.cls, cls_t)

    def at_cell(pred: torch.Tensor, target: np.ndarray, k: int) -> torch.Tensor:
        p = pred.reshape(b, n * k, -1)
        t = torch.from_numpy(target).float().reshape(b, n * k, -1)
        idx = ids.repeat_interleave(k, dim=1)[..., None]
        return F.l1_loss(p.gather(2, idx), t.gather(2, idx))

    return (
        10 * loss_cls
        + at_cell(out.x, dense["x"], 1)
        + at_cell(out.y, dense["y"], 1)
        + at_cell(out.nb_x, dense["nb_x"], c)
        + at_cell(out.nb_y, dense["nb_y"], c)
    )


def test_score_term_at_init_is_one_over_cells() -> None:
    torch.manual_seed(0)
    model = create_model(68, num_nb=10, base_width=8, input_size=256).train()  # batch statistics, as in step 1
    with torch.no_grad():
        out = model(torch.randn(4, 3, 256, 256))
    lm = _landmarks(4)
    total, parts = pip_loss(out, _targets(lm, ["std"] * 4))
    assert parts["score"] == pytest.approx(1 / 64, rel=0.05)  # docs/algorithm.md section 7
    # Offsets are ~0 at init, so each L1 term is about the mean |target|.
    t = build_targets(lm, ["std"] * 4, TABLE.nb, 8)
    assert parts["x"] == pytest.approx(float(np.abs(t.x).mean()), rel=0.05)
    assert parts["nb_y"] == pytest.approx(float(np.abs(t.nb_y).mean()), rel=0.05)
    assert float(total) == pytest.approx(parts["total"], rel=1e-6)
    weighted = 10 * parts["score"] + parts["x"] + parts["y"] + parts["nb_x"] + parts["nb_y"]
    assert parts["total"] == pytest.approx(weighted, rel=1e-6)


def test_all_std_batch_equals_plain_unmasked_loss() -> None:
    lm = _landmarks(3, seed=1)
    out = _random_outputs(3)
    total, _ = pip_loss(out, _targets(lm, ["std"] * 3))
    expected = _plain_pip_loss(out, encode_dense(lm, 8, TABLE.nb))
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-6)
    g1 = torch.autograd.grad(total, out.nb_x)[0]
    g2 = torch.autograd.grad(_plain_pip_loss(out, encode_dense(lm, 8, TABLE.nb)), out.nb_x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)


def test_cls3_sample_gives_no_gradient_to_offset_heads() -> None:
    torch.manual_seed(3)
    model = create_model(68, num_nb=10, base_width=8, input_size=256)
    out = model(torch.randn(2, 3, 256, 256))
    total, parts = pip_loss(out, _targets(_landmarks(2), ["cls3", "cls3"]))
    total.backward()
    for head in (model.x_layer, model.y_layer, model.nb_x_layer, model.nb_y_layer):
        assert torch.count_nonzero(head.weight.grad) == 0 and torch.count_nonzero(head.bias.grad) == 0
    assert torch.count_nonzero(model.cls_layer.weight.grad) > 0
    assert parts["x"] == 0.0 and parts["nb_x"] == 0.0


def test_mixed_batch_masks_per_sample() -> None:
    out = _random_outputs(3, seed=4)
    total, _ = pip_loss(out, _targets(_landmarks(3, seed=4), ["std", "cls2", "cls3"]))
    gx, gc1, gc2, gc3 = torch.autograd.grad(total, [out.x, out.cls, out.cls2, out.cls3])
    # Offsets and the fine map learn from sample 0 only; cls2 from sample 1; cls3 from sample 2.
    assert gx[0].abs().sum() > 0 and gx[1:].abs().sum() == 0
    assert gc1[0].abs().sum() > 0 and gc1[1:].abs().sum() == 0
    assert gc2[1].abs().sum() > 0 and gc2[[0, 2]].abs().sum() == 0
    assert gc3[2].abs().sum() > 0 and gc3[:2].abs().sum() == 0


def test_masked_score_is_mean_over_active_cells() -> None:
    out = _random_outputs(2, seed=5)
    tg = _targets(_landmarks(2, seed=5), ["cls2", "cls3"])
    _, parts = pip_loss(out, tg)
    sq2 = (out.cls2[0] - tg.cls2[0]).square().sum()
    sq3 = (out.cls3[1] - tg.cls3[1]).square().sum()
    expected = (sq2 + sq3) / (68 * 16 + 68 * 4)
    assert parts["score"] == pytest.approx(float(expected.detach()), rel=1e-5)


def test_missing_landmarks_are_masked_without_nan() -> None:
    lm = _landmarks(2, seed=6)
    lm[0, 5] = np.nan
    lm[1, :10] = np.nan
    out = _random_outputs(2, seed=6)
    total, parts = pip_loss(out, _targets(lm, ["std", "std"]))
    assert np.isfinite(parts["total"])
    gx, gc = torch.autograd.grad(total, [out.x, out.cls])
    assert torch.isfinite(gx).all() and torch.isfinite(gc).all()
    assert gx[0, 5].abs().sum() == 0 and gc[0, 5].abs().sum() == 0 and gc[1, :10].abs().sum() == 0
    assert gx[0, 6].abs().sum() > 0
    # Neighbour votes cast by landmark 6 for the missing landmark 5 are not trained either.
    j = np.flatnonzero(TABLE.nb[6] == 5)
    if j.size:
        gnb = torch.autograd.grad(pip_loss(out, _targets(lm, ["std", "std"]))[0], out.nb_x)[0]
        assert gnb[0, 6 * 10 + int(j[0])].abs().sum() == 0


def test_shape_mismatch_is_refused() -> None:
    out = _random_outputs(1)
    tg = _targets(_landmarks(1), ["std"], grid=4)
    with pytest.raises(ValueError, match="cls1"):
        pip_loss(out, tg)
