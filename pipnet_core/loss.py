"""PIPNet's masked training loss (score MSE x 10 + L1 offsets and neighbours at the true cell).

Official code ``lib/functions_gssl.py`` (masked multi-scale form) and ``lib/functions.py`` (plain
form), summarised in docs/algorithm.md sections 2.8 and 4.3:

* score: the per-(b, i) concatenation of the cls1 | cls2 | cls3 maps, ``sum(mask * (pred - tgt)^2) /
  sum(mask)``, where a sample's level decides which maps are active (``std`` and ``cls1``: cls1;
  ``cls2``: cls2; ``cls3``: cls3) and missing landmarks (NaN labels, issue #46) are masked out;
* regression: L1 of the x, y, nb_x, nb_y predictions gathered at the landmark's true cls1 cell,
  masked by the sample's regression mask (``std`` only) and the landmark's validity, divided by the
  mask sum;
* total: ``cls_weight * score + reg_weight * (x + y + nb_x + nb_y)`` with weights 10 and 1.

With every sample ``std`` and every landmark present this is exactly the official supervised loss:
``MSELoss()`` over all B*N*S*S score cells plus mean L1 over the B*N (B*N*C) gathered values.

STLD's additions (Jin, Che & Chen, TIP 2024; jhb86253817/STLD ``lib/functions.py``, ported to PIPNet in
docs/algorithm.md section 6.2) enter per sample through the targets:

* a sample feeds one head set, the main heads or the second set (``aux``); each set's terms are
  normalised by its own mask sum, as STLD's heatmap loss is per head, so the pseudo-label term keeps
  its scale whatever share of the batch it is;
* the regression loss of a sample is the "shrink" loss ``|e|^p / p`` (p >= 1; p = 1 is the L1 above):
  for p > 1 the gradient ``|e|^(p-1)`` vanishes for small errors, so a noisy pseudo-label only pushes
  back where it disagrees a lot;
* a sample's weight multiplies its terms (the numerator; the denominator counts samples unweighted),
  so a head set whose samples all weigh w contributes w times its plain loss: STLD's
  ``loss1 + w * loss2``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from pipnet_core.model import PIPOutputs

__all__ = ["LOSS_PARTS", "BatchTargets", "pip_loss", "shrink_loss", "targets_to_torch"]

# Main-head parts (unweighted means, as logged by the official code) and the weighted aux-head total.
LOSS_PARTS = ("score", "x", "y", "nb_x", "nb_y", "aux")


class BatchTargets(NamedTuple):
    """Training targets of a batch as tensors (the torch twin of ``pipnet_core.targets.Targets``).

    Attributes:
        cls1: (B, N, S, S) one-hot score targets.
        cls2: (B, N, S/2, S/2).
        cls3: (B, N, S/4, S/4).
        cell: (B, N) int64 flat index of the true cell in the S x S map.
        x: (B, N) x offset of the landmark from that cell's top-left corner, in cell units.
        y: (B, N).
        nb_x: (B, N, C) neighbour x offsets from landmark i's cell.
        nb_y: (B, N, C).
        valid: (B, N) 1 where the landmark is labelled.
        nb_valid: (B, N, C) 1 where both landmark i and its neighbour are labelled.
        mask_cls: (B, 3) which of cls1/cls2/cls3 each sample supervises.
        mask_reg: (B,) 1 where the sample supervises offsets and neighbours.
        head: (B,) 1 where the sample feeds the second head set (STLD's shrink head), 0 the main heads.
        shrink: (B,) exponent p of the sample's regression loss ``|e|^p / p``.
        weight: (B,) factor of the sample's loss terms.
    """

    cls1: torch.Tensor
    cls2: torch.Tensor
    cls3: torch.Tensor
    cell: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    nb_x: torch.Tensor
    nb_y: torch.Tensor
    valid: torch.Tensor
    nb_valid: torch.Tensor
    mask_cls: torch.Tensor
    mask_reg: torch.Tensor
    head: torch.Tensor
    shrink: torch.Tensor
    weight: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchTargets:
        """Move every field to ``device``."""
        return BatchTargets(*(t.to(device, non_blocking=non_blocking) for t in self))


def targets_to_torch(targets: Any) -> BatchTargets:
    """Convert the numpy ``Targets`` of :func:`pipnet_core.targets.build_targets` to tensors.

    Float fields become float32 with NaN replaced by 0 (they are masked anyway, and a NaN would turn
    a masked zero into a NaN gradient); masks (and ``head``) become float32; ``cell`` int64.
    """
    out = {}
    for name in BatchTargets._fields:
        a = np.asarray(getattr(targets, name))
        if name == "cell":
            out[name] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        else:
            out[name] = torch.from_numpy(np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0))
    return BatchTargets(**out)


def _gather_cell(pred: torch.Tensor, cell: torch.Tensor, groups: int) -> torch.Tensor:
    """pred (B, groups*N, S, S) at each landmark's cell -> (B, N, groups) (groups = C, or 1)."""
    b, n = cell.shape
    flat = pred.reshape(b, n, groups, -1)
    idx = cell.clamp(0, flat.shape[-1] - 1)[:, :, None, None].expand(b, n, groups, 1)
    return flat.gather(3, idx).squeeze(3)


def shrink_loss(err: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """STLD's shrink regression loss ``|e|^p / p`` elementwise (p = 1: the L1 loss ``|e|``).

    Args:
        err: Prediction minus target, any shape.
        p: Exponents >= 1, broadcastable to ``err`` (one per sample, e.g. (B, 1) or (B, 1, 1)).

    The gradient ``sign(e) |e|^(p-1)`` is finite everywhere for p >= 1, zero included.
    """
    return err.abs().pow(p) / p


def _head_terms(
    out: PIPOutputs, tgt: BatchTargets, feeds: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score MSE and the four regression terms of one head set over the samples it is fed.

    ``feeds`` is (B,) 1 for the samples of this head set. Each term is sum(weight * mask * loss) over
    sum(mask): the masks (``feeds`` included) count entries, the weights only scale them.
    """
    b, n = out.cls.shape[:2]
    dtype = out.cls.dtype
    valid = tgt.valid.to(dtype) * feeds[:, None]  # (B, N)
    weight = tgt.weight.to(dtype)[:, None]  # (B, 1)
    mask_cls = tgt.mask_cls.to(dtype)
    num = out.cls.new_zeros(())
    den = out.cls.new_zeros(())
    for level, (pred, target) in enumerate(((out.cls, tgt.cls1), (out.cls2, tgt.cls2), (out.cls3, tgt.cls3))):
        if target.shape[-1] == 0 and not bool(mask_cls[:, level].any()):
            continue  # a grid too small for this coarse map (build_targets gives it 0x0); nothing supervises it
        if pred.shape != target.shape:
            raise ValueError(
                f"score map cls{level + 1}: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}; "
                "build targets with the model's grid (input_size // net_stride)"
            )
        w = mask_cls[:, level, None] * valid  # (B, N): this map supervises this landmark
        sq = (pred - target).square().reshape(b, n, -1).sum(-1)
        num = num + (weight * w * sq).sum()
        den = den + w.sum() * pred.shape[-1] * pred.shape[-2]
    terms = {"score": num / den.clamp_min(1.0)}

    w_reg = tgt.mask_reg.to(dtype)[:, None] * valid  # (B, N)
    w_nb = w_reg[:, :, None] * tgt.nb_valid.to(dtype)  # (B, N, C)
    p = tgt.shrink.to(dtype)
    c = tgt.nb_x.shape[-1]
    for name, pred, target in (("x", out.x, tgt.x), ("y", out.y, tgt.y)):
        err = shrink_loss(_gather_cell(pred, tgt.cell, 1).squeeze(2) - target, p[:, None])
        terms[name] = (weight * w_reg * err).sum() / w_reg.sum().clamp_min(1.0)
    for name, pred, target in (("nb_x", out.nb_x, tgt.nb_x), ("nb_y", out.nb_y, tgt.nb_y)):
        err = shrink_loss(_gather_cell(pred, tgt.cell, c) - target, p[:, None, None])
        terms[name] = (weight[:, :, None] * w_nb * err).sum() / w_nb.sum().clamp_min(1.0)
    return terms["score"], terms


def pip_loss(
    out: PIPOutputs,
    tgt: BatchTargets,
    cls_weight: float = 10.0,
    reg_weight: float = 1.0,
    aux: PIPOutputs | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The masked PIPNet loss of a batch, with STLD's second head set when ``aux`` is given.

    Args:
        out: Model outputs of the main heads.
        tgt: Targets on the same device.
        cls_weight: Score-loss weight; 10 at S = 8 in the official configs (docs/algorithm.md section
            2.8: chosen so the score loss is comparable to the regression loss).
        reg_weight: Weight of each regression term; 1 in the official configs.
        aux: Outputs of the second head set (``model(x, with_aux=True)[1]``); the samples with
            ``tgt.head == 1`` feed it with the same loss form. Without it such samples add nothing
            (the training loop refuses that case before it starts).

    Returns:
        The total loss (a scalar with grad) and its parts as floats: ``score`` (unweighted MSE),
        ``x``, ``y``, ``nb_x``, ``nb_y`` of the main heads, ``aux`` (the second set's weighted total,
        0 without it) and ``total``.

    Raises:
        ValueError: target and prediction map sizes differ.
    """
    to_aux = tgt.head.to(out.cls.dtype)
    score, reg = _head_terms(out, tgt, 1.0 - to_aux)
    total = cls_weight * score + reg_weight * (reg["x"] + reg["y"] + reg["nb_x"] + reg["nb_y"])
    aux_total = out.cls.new_zeros(())
    if aux is not None:
        a_score, a_reg = _head_terms(aux, tgt, to_aux)
        aux_total = cls_weight * a_score + reg_weight * (a_reg["x"] + a_reg["y"] + a_reg["nb_x"] + a_reg["nb_y"])
        total = total + aux_total
    parts = torch.stack([score, reg["x"], reg["y"], reg["nb_x"], reg["nb_y"], aux_total, total])
    return total, dict(zip((*LOSS_PARTS, "total"), parts.detach().cpu().tolist(), strict=True))
