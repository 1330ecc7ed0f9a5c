"""Deterministic splits from the sample id, so a face lands in the same split on every machine and run.

A sample's split is decided once, when it enters the store, and never changes (docs/store.md section 6).
The rule (:func:`assign_split`): a keyed BLAKE2b hash (RFC 7693) of the ``sample_id`` read as a
64-bit fraction in [0, 1); below ``holdout_fraction`` the sample is ``holdout``, otherwise it gets
the caller's default (``train`` for human-labelled imports, ``pool`` for unlabelled ones). The hash
is keyed with a pipstc-specific personalisation so the choice is independent of how the id itself was
made (sample ids are content hashes too). Samples that arrive with an explicit split keep it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

__all__ = ["DEFAULT_SPLITS", "assign_split", "assign_splits", "split_fraction"]

# The splits a caller may name as the default of samples that arrive without one.
DEFAULT_SPLITS = ("train", "pool")
_PERSON = b"pipstc-split-v1"  # changing it would move samples between splits: never change it
_SCALE = float(2**64)


def split_fraction(sample_id: str) -> float:
    """The sample's position in [0, 1) under the split hash (uniform over ids)."""
    digest = hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") / _SCALE


def _check(holdout_fraction: float, default: str) -> None:
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
    if default not in DEFAULT_SPLITS:
        raise ValueError(f"default split must be one of {DEFAULT_SPLITS}, got {default!r}")


def assign_split(sample_id: str, holdout_fraction: float, default: str) -> str:
    """``"holdout"`` when the id's hash falls below ``holdout_fraction``, else ``default``.

    Args:
        sample_id: The sample's id.
        holdout_fraction: Share of samples set aside for evaluation, in [0, 1).
        default: ``"train"`` or ``"pool"``.
    """
    _check(holdout_fraction, default)
    return "holdout" if split_fraction(sample_id) < holdout_fraction else default


def assign_splits(sample_ids: Iterable[str], holdout_fraction: float, default: str) -> np.ndarray:
    """:func:`assign_split` over many ids; returns an object array of split names, in order."""
    _check(holdout_fraction, default)
    person = _PERSON
    fractions = (
        np.fromiter(
            (
                int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8, person=person).digest(), "big")
                for s in sample_ids
            ),
            dtype=np.uint64,
        ).astype(np.float64)
        / _SCALE
    )
    out = np.full(len(fractions), default, dtype=object)
    out[fractions < holdout_fraction] = "holdout"
    return out
