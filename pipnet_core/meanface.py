"""Mean face and the neighbour table of PIPNet's Neighbor Regression Module (NRM).

PIPNet (Jin, Liao & Shao, "Pixel-in-Pixel Net", IJCV 2021) lets every landmark also predict the
positions of its C nearest landmarks on the mean face; at test time each landmark's own estimate is
averaged with the votes the other landmarks cast for it. This module builds that topology exactly as
the official code does (``lib/functions.py: get_meanface``, summarised in docs/algorithm.md sections 2.5-2.6):

* the mean face is the mean of the normalised training landmarks (crop coordinates in [0, 1]);
* the neighbours of landmark i are the next C entries of the ascending argsort (numpy's default
  sort) of the squared distances from i on the mean face, i itself dropped;
* the reverse index lists, for every landmark k, the pairs (i, j) with ``nb[i, j] == k``; the
  lists are padded to ``max_len = max_k L_k`` by cyclic repetition (the list is appended to itself
  ten times, then truncated), so the merge is a fixed-size mean (section 2.11) and some votes count
  more than once. Matching published numbers needs this padding reproduced exactly.

The padding is only possible when every landmark is somebody's neighbour (``L_k >= 1``) and the
eleven copies reach ``max_len`` (``11 * L_k >= max_len``); custom layouts that break either rule are
refused with :class:`NeighbourError` rather than producing a silently wrong merge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "NeighbourError",
    "NeighbourTable",
    "build_neighbour_table",
    "compute_meanface",
    "neighbour_table_from_nb",
]

# The official code appends a reverse list to itself ten times (11 copies) before truncating.
_PAD_COPIES = 11


class NeighbourError(ValueError):
    """A neighbour layout cannot be used for PIPNet's merge; the message names landmarks and the fix."""


@dataclass(frozen=True)
class NeighbourTable:
    """The NRM topology: who predicts whom, and the padded reverse index used by the merge.

    Attributes:
        nb: (N, C) int64; ``nb[i, j]`` is the j-th nearest landmark of landmark i on the mean face.
            Channel ``i * C + j`` of the neighbour heads predicts landmark ``nb[i, j]``.
        reverse_index1: (N * max_len,) int64; for landmark k, entries ``k*max_len:(k+1)*max_len``
            are the voters i (cyclically padded).
        reverse_index2: (N * max_len,) int64; the matching neighbour slots j.
        max_len: The padded number of votes per landmark, ``max_k L_k``.
    """

    nb: np.ndarray
    reverse_index1: np.ndarray
    reverse_index2: np.ndarray
    max_len: int

    @property
    def num_landmarks(self) -> int:
        """N."""
        return int(self.nb.shape[0])

    @property
    def num_nb(self) -> int:
        """C, the number of neighbours each landmark predicts."""
        return int(self.nb.shape[1])

    @property
    def vote_counts(self) -> np.ndarray:
        """(N,) int64: L_k, the number of distinct votes each landmark receives."""
        return np.bincount(self.nb.ravel(), minlength=self.num_landmarks).astype(np.int64)


def compute_meanface(landmarks: np.ndarray) -> np.ndarray:
    """The mean shape of a set of faces, ignoring missing landmarks.

    Args:
        landmarks: (M, N, 2) landmarks in normalised crop coordinates; NaN marks a missing landmark.

    Returns:
        (N, 2) float64 mean face.

    Raises:
        ValueError: wrong shape, or a landmark that is missing in every face (its mean is undefined).
    """
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 2 or arr.shape[0] == 0:
        raise ValueError(f"compute_meanface: expected landmarks of shape (M, N, 2) with M >= 1, got {arr.shape}")
    present = np.isfinite(arr).all(axis=2)  # (M, N)
    counts = present.sum(axis=0)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"compute_meanface: landmark(s) {missing} are missing (NaN) in all {arr.shape[0]} faces; "
            "label them in at least one face or give the scheme's mean face instead"
        )
    total = np.where(present[..., None], arr, 0.0).sum(axis=0)
    return total / counts[:, None]


def _nearest_neighbours(meanface: np.ndarray, num_nb: int) -> np.ndarray:
    n = meanface.shape[0]
    nb = np.empty((n, num_nb), dtype=np.int64)
    for i in range(n):
        dists = ((meanface[i] - meanface) ** 2).sum(axis=1)
        order = np.argsort(dists)  # numpy's default (quicksort) kind, as in the official code
        # The official code drops position 0, which is i itself unless another landmark coincides
        # with it; removing i explicitly gives the same table on every real layout and never lets a
        # landmark vote for itself.
        order = order[order != i]
        nb[i] = order[:num_nb]
    return nb


def neighbour_table_from_nb(nb: np.ndarray) -> NeighbourTable:
    """Build the padded reverse index for a given (N, C) neighbour table.

    Useful to rebuild the merge from a table stored in a checkpoint. Validation as in
    :func:`build_neighbour_table`.

    Raises:
        NeighbourError: some landmark is nobody's neighbour, or its votes are too few to pad to
            ``max_len`` (``11 * L_k < max_len``), or the table is malformed.
    """
    nb = np.asarray(nb)
    if nb.ndim != 2 or nb.shape[1] < 1 or not np.issubdtype(nb.dtype, np.integer):
        raise NeighbourError(f"neighbour table must be an (N, C) integer array with C >= 1, got {nb.shape} {nb.dtype}")
    n, c = nb.shape
    nb = nb.astype(np.int64)
    if nb.min() < 0 or nb.max() >= n:
        raise NeighbourError(f"neighbour table refers to landmarks outside 0..{n - 1}")
    if (nb == np.arange(n)[:, None]).any():
        raise NeighbourError("neighbour table lists a landmark as its own neighbour")
    # Pairs (i, j) with nb[i, j] == k, in the official order: i ascending, then j ascending.
    voters: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(c):
            voters[int(nb[i, j])].append((i, j))
    lengths = np.array([len(v) for v in voters])
    orphans = np.flatnonzero(lengths == 0).tolist()
    if orphans:
        raise NeighbourError(
            f"landmark(s) {orphans} are nobody's neighbour with C={c}: the merge would have no vote for them. "
            f"Use a larger number of neighbours (num_nb > {c}) or a mean face where these landmarks are nearer others"
        )
    max_len = int(lengths.max())
    short = np.flatnonzero(_PAD_COPIES * lengths < max_len).tolist()
    if short:
        raise NeighbourError(
            f"landmark(s) {short} receive only {lengths[short].tolist()} vote(s) while another receives {max_len}; "
            f"the official cyclic padding (11 copies) cannot reach {max_len}. Use a smaller number of neighbours "
            f"(num_nb < {c}) so the votes are spread more evenly"
        )
    r1 = np.empty((n, max_len), dtype=np.int64)
    r2 = np.empty((n, max_len), dtype=np.int64)
    for k, pairs in enumerate(voters):
        padded = (pairs * _PAD_COPIES)[:max_len]
        r1[k] = [p[0] for p in padded]
        r2[k] = [p[1] for p in padded]
    return NeighbourTable(nb=nb, reverse_index1=r1.ravel(), reverse_index2=r2.ravel(), max_len=max_len)


def build_neighbour_table(meanface: np.ndarray, num_nb: int = 10) -> NeighbourTable:
    """The official neighbour table and merge index of a mean face (docs/algorithm.md sections 2.5-2.6).

    Args:
        meanface: (N, 2) mean face in normalised crop coordinates.
        num_nb: C, neighbours per landmark (10 in every released config; the author suggests about 5
            for small layouts, issue #48).

    Returns:
        The :class:`NeighbourTable`; e.g. 300W at C=10 gives ``max_len`` 22, WFLW 17, COFW 19, AFLW 18.

    Raises:
        NeighbourError: ``num_nb`` not in 1..N-1, a non-finite mean face, or a layout where the merge
            is impossible (see :func:`neighbour_table_from_nb`).
    """
    mf = np.asarray(meanface, dtype=np.float64)
    if mf.ndim != 2 or mf.shape[1] != 2 or mf.shape[0] < 2:
        raise NeighbourError(f"mean face must have shape (N, 2) with N >= 2, got {mf.shape}")
    if not np.isfinite(mf).all():
        bad = np.flatnonzero(~np.isfinite(mf).all(axis=1)).tolist()
        raise NeighbourError(f"mean face has non-finite coordinates for landmark(s) {bad}")
    n = mf.shape[0]
    if not isinstance(num_nb, int | np.integer) or not 1 <= num_nb < n:
        raise NeighbourError(f"num_nb must be an integer in 1..{n - 1} for {n} landmarks, got {num_nb!r}")
    return neighbour_table_from_nb(_nearest_neighbours(mf, int(num_nb)))
