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
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from pipnet_core.model import PIPOutputs

__all__ = ["LOSS_PARTS", "BatchTargets", "pip_loss", "targets_to_torch"]

LOSS_PARTS = ("score", "x", "y", "nb_x", "nb_y")


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

    def to(self, device: torch.device | str, non_blocking: bool = False) -> BatchTargets:
        """Move every field to ``device``."""
        return BatchTargets(*(t.to(device, non_blocking=non_blocking) for t in self))


def targets_to_torch(targets: Any) -> BatchTargets:
    """Convert the numpy ``Targets`` of :func:`pipnet_core.targets.build_targets` to tensors.

    Float fields become float32 with NaN replaced by 0 (they are masked anyway, and a NaN would turn
    a masked zero into a NaN gradient); masks become float32; ``cell`` int64.
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


def pip_loss(
    out: PIPOutputs, tgt: BatchTargets, cls_weight: float = 10.0, reg_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The masked PIPNet loss of a batch.

    Args:
        out: Model outputs.
        tgt: Targets on the same device.
        cls_weight: Score-loss weight; 10 at S = 8 in the official configs (docs/algorithm.md section 2.8: chosen so the
            score loss is comparable to the regression loss).
        reg_weight: Weight of each regression term; 1 in the official configs.

    Returns:
        The total loss (a scalar with grad) and its parts as floats: ``score`` (unweighted MSE),
        ``x``, ``y``, ``nb_x``, ``nb_y`` and ``total``.

    Raises:
        ValueError: target and prediction map sizes differ.
    """
    b, n = out.cls.shape[:2]
    valid = tgt.valid.to(out.cls.dtype)
    mask_cls = tgt.mask_cls.to(out.cls.dtype)
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
        num = num + (w * sq).sum()
        den = den + w.sum() * pred.shape[-1] * pred.shape[-2]
    score = num / den.clamp_min(1.0)

    w_reg = tgt.mask_reg.to(out.cls.dtype)[:, None] * valid  # (B, N)
    w_nb = w_reg[:, :, None] * tgt.nb_valid.to(out.cls.dtype)  # (B, N, C)
    c = tgt.nb_x.shape[-1]
    reg = {}
    for name, pred, target in (("x", out.x, tgt.x), ("y", out.y, tgt.y)):
        err = (_gather_cell(pred, tgt.cell, 1).squeeze(2) - target).abs()
        reg[name] = (w_reg * err).sum() / w_reg.sum().clamp_min(1.0)
    for name, pred, target in (("nb_x", out.nb_x, tgt.nb_x), ("nb_y", out.nb_y, tgt.nb_y)):
        err = (_gather_cell(pred, tgt.cell, c) - target).abs()
        reg[name] = (w_nb * err).sum() / w_nb.sum().clamp_min(1.0)

    total = cls_weight * score + reg_weight * (reg["x"] + reg["y"] + reg["nb_x"] + reg["nb_y"])
    values = torch.stack([score, reg["x"], reg["y"], reg["nb_x"], reg["nb_y"], total]).detach().cpu().tolist()
    return total, dict(zip((*LOSS_PARTS, "total"), values, strict=True))
