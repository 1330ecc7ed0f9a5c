"""The label store: every sample, label, pseudo-label, correction and review of a project, in Parquet.

Layout (docs/store.md section 2), at a local folder or any pyarrow/fsspec URL (:mod:`annotations.store._fs`)::

    <store>/store.json                                 scheme, schema version, created_at, settings
    <store>/samples/part-*.parquet
    <store>/labels/round=<k>/source=<s>/part-*.parquet
    <store>/reviews/part-*.parquet
    <store>/rejects/part-*.parquet
    <store>/rounds/round=<k>/                          steps.json, config.json, model.pt, metrics.json, ...

Guarantees:

* Append-only, atomic writes (temporary file + rename), one writer at a time (:mod:`annotations.store._lock`);
  readers only see committed ``part-*.parquet`` files (:mod:`annotations.store._parts`).
* Retried writes are no-ops: samples dedupe on ``sample_id``, labels on ``label_id`` (deterministic,
  :data:`annotations.store._convert.LABEL_ID_FIELDS`), reviews and rejects on their natural keys. A batch
  spanning several ``(round, source)`` partitions commits partition by partition; rerunning it after
  a crash writes what is missing.
* The holdout never leaks: pseudo-labels, corrections and reviews of holdout samples are refused
  (:class:`HoldoutLeak`), and the training and review views leave holdout out unless asked.
* A store of an older schema version is migrated on open (with a backup), a newer one refused, never
  misread (:class:`SchemaVersionError`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from annotations.store._convert import (
    REJECT_KEY,
    REVIEW_KEY,
    examples,
    first_of_each,
    label_table,
    natural_keys,
    new_states,
    not_in,
    rejects_table,
    reviews_table,
    samples_table,
)
from annotations.store._fs import StoreFS, is_hidden
from annotations.store._lock import REVIEW_LOCK_NAME, writer_lock
from annotations.store._meta import META_NAME, new_meta, read_meta, write_meta
from annotations.store._parts import TABLES, Part, PartReader
from annotations.store.errors import (
    CorruptFile,
    HoldoutLeak,
    RoundFileMissing,
    SchemaVersionError,
    StoreError,
    StoreLocked,
)
from annotations.store.holdout import HoldoutGuard, holdout_conflicts, refuse_conflicts
from annotations.store.ids import LabelIds
from annotations.store.migrate import read_or_migrate
from annotations.store.retractions import in_force
from annotations.store.rounds import RoundBook
from annotations.store.schema import LABEL_SOURCES, SPLITS
from annotations.store.splits import assign_split
from annotations.store.views import (
    LabelView,
    build_view,
    choose_current,
    codes_of,
    latest_per_group,
    priorities,
    to_pandas,
)
from pipnet_core.schemes import Scheme

__all__ = [
    "CorruptFile",
    "HoldoutLeak",
    "LabelView",
    "RoundFileMissing",
    "SchemaVersionError",
    "Store",
    "StoreError",
    "StoreLocked",
    "assign_split",
]

_HOLDOUT = SPLITS.index("holdout")
_ROOT_ENTRIES = {META_NAME, "rounds", *TABLES}


@dataclass
class _SampleIndex:
    """sample_id -> split code of every stored sample, grown incrementally as parts appear."""

    paths: tuple[str, ...]
    ids: pa.Array
    split: np.ndarray  # (S,) int8 index into SPLITS


class Store(RoundBook, HoldoutGuard):
    """A label store. Make one with :meth:`create`, open one with :meth:`open`.

    Attributes:
        url: The store's address (an absolute local path, or the URL it was opened with).
        scheme: The landmark scheme of every label in the store.
        holdout_fraction: Share of samples that :func:`annotations.store.splits.assign_split` sets aside.
    """

    def __init__(self, sfs: StoreFS, meta: dict[str, Any]) -> None:
        """Use :meth:`create` or :meth:`open`."""
        self._fs = sfs
        self.url: str = sfs.url
        self.scheme: Scheme = meta["_scheme"]
        self.holdout_fraction: float = float(meta["holdout_fraction"])
        self.created_at: str = meta["created_at"]
        self._lock = writer_lock(sfs)
        self._reader = PartReader(sfs, self.scheme.num_landmarks)
        self._samples: _SampleIndex | None = None
        self._label_ids: dict[str, pa.Array] = {}
        self._swept = False

    def __repr__(self) -> str:
        return f"Store({self.url!r}, scheme={self.scheme.name!r})"

    # ============================================================ create / open
    @classmethod
    def create(
        cls, url: str | os.PathLike, scheme: Scheme, *, holdout_fraction: float = 0.1, exist_ok: bool = False
    ) -> Store:
        """Make a new store for ``scheme`` at ``url`` (a local folder or a filesystem URL).

        Args:
            url: Where: a path (created if missing; must be empty) or a URL such as ``s3://bucket/store``.
            scheme: The landmark scheme of every label the store will hold.
            holdout_fraction: Share of samples without an explicit split that become holdout, in [0, 1).
            exist_ok: Open an existing store instead of failing, if its scheme and holdout fraction match.

        Raises:
            StoreError: a store (or other files) already there, or settings differ from the existing store.
        """
        if not 0.0 <= float(holdout_fraction) < 1.0:
            raise StoreError(f"holdout_fraction must be in [0, 1), got {holdout_fraction!r}")
        sfs = StoreFS.from_url(url)
        meta_path = sfs.path(META_NAME)
        with writer_lock(sfs).hold():
            if sfs.exists(meta_path):
                if not exist_ok:
                    raise StoreError(
                        f"{sfs.show(meta_path)}: a store already exists here; open it with Store.open, or pass "
                        "exist_ok=True"
                    )
                store = cls.open(url)
                if store.scheme != scheme:
                    raise StoreError(
                        f"{store.url}: the existing store uses scheme {store.scheme.name!r} "
                        f"({store.scheme.num_landmarks} landmarks), not {scheme.name!r}; use another folder"
                    )
                if store.holdout_fraction != float(holdout_fraction):
                    raise StoreError(
                        f"{store.url}: the existing store sets aside holdout_fraction={store.holdout_fraction}, "
                        f"not {holdout_fraction}; the split rule cannot change once samples are stored"
                    )
                return store
            others = [i.base_name for i in sfs.list(sfs.root, recursive=False) if not is_hidden(i.base_name)]
            if others:
                raise StoreError(
                    f"{sfs.show(sfs.root)}: folder is not empty ({examples(others)}) and holds no store.json; "
                    "create the store in an empty or new folder"
                )
            for table in (*TABLES, "rounds"):
                sfs.makedirs(sfs.path(table))
            meta = write_meta(sfs, new_meta(scheme, float(holdout_fraction)))
        return cls(sfs, meta)

    @classmethod
    def open(cls, url: str | os.PathLike) -> Store:
        """Open an existing store, checking its schema version.

        A store written by an older pipstc is migrated first, keeping a backup of the old files
        (:mod:`annotations.store.migrate`); set PIPSTC_AUTO_MIGRATE=0 to refuse it instead.

        Raises:
            StoreError: no store at ``url``.
            SchemaVersionError: the store was written by a newer pipstc (or an older one, with auto-migration off).
            CorruptFile: store.json is unreadable.
        """
        sfs = StoreFS.from_url(url)
        return cls(sfs, read_or_migrate(sfs))

    # ============================================================== settings
    def _meta(self) -> dict[str, Any]:
        return read_meta(self._fs)

    def get_setting(self, key: str, default: Any = None) -> Any:
        """A setting persisted in store.json (e.g. ``"labelstudio.project_id"``), or ``default``."""
        return self._meta().get("settings", {}).get(key, default)

    def set_setting(self, key: str, value: Any) -> None:
        """Persist a JSON-serialisable setting in store.json (atomically, under the writer lock)."""
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise StoreError(f"setting {key!r}: value is not JSON-serialisable ({e}); store plain data") from None
        with self.lock():
            meta = self._meta()
            meta.setdefault("settings", {})[key] = value
            write_meta(self._fs, meta)

    # ================================================================= lock
    def lock(self) -> AbstractContextManager[None]:
        """The writer lock as a context manager (re-entrant within a thread; shared by the process).

        Raises:
            StoreLocked: another live writer held it until the timeout (PIPSTC_LOCK_TIMEOUT_S, 600 s).
        """
        return self._lock.hold()

    def review_lock(self, timeout: float | None = None) -> AbstractContextManager[None]:
        """The lock that serialises Label Studio pushers (annotations.review.push): held across their HTTP
        calls instead of the writer lock, so a review sync can write while a push waits on the server."""
        return writer_lock(self._fs, REVIEW_LOCK_NAME).hold(timeout)

    @contextmanager
    def _writing(self, folder: str | None = None) -> Iterator[None]:
        """Hold the lock; remove leftovers of crashed writers (whole store once, then the target folder)."""
        with self.lock():
            if not self._swept:
                self._fs.clean_temps(self._fs.root, recursive=True)
                self._swept = True
            elif folder is not None:
                self._fs.clean_temps(folder, recursive=False)
            yield

    # ================================================================ samples
    def _sample_index(self) -> _SampleIndex:
        parts = self._reader.parts("samples")
        paths = tuple(p.path for p in parts)
        old = self._samples
        if old is not None and paths[: len(old.paths)] == old.paths:
            new = parts[len(old.paths) :]
            if not new:
                return old
            t = self._reader.read("samples", new, ["sample_id", "split"])
            ids = pa.concat_arrays([old.ids, t["sample_id"].combine_chunks()])
            split = np.concatenate([old.split, codes_of(t["split"], SPLITS)])
        else:
            t = self._reader.read("samples", parts, ["sample_id", "split"])
            ids, split = t["sample_id"].combine_chunks(), codes_of(t["split"], SPLITS)
        self._samples = _SampleIndex(paths, ids, split)
        return self._samples

    def _split_codes(self, sample_ids: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(R,) int64 sample position (-1 unknown) and (R,) int8 split code (-1 unknown) of each id."""
        idx = self._sample_index()
        pos = pc.index_in(sample_ids, value_set=idx.ids)
        pos_np = np.asarray(pc.fill_null(pos, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        split = np.where(pos_np >= 0, idx.split[np.maximum(pos_np, 0)] if len(idx.split) else -1, -1)
        return pos_np, split.astype(np.int8)

    def add_samples(self, samples: pd.DataFrame, default_split: str = "train") -> int:
        """Add faces; ids already stored are skipped (a retried import is a no-op).

        Split rule: a row's explicit ``split`` is kept; a missing one (None/NaN, or no ``split`` column)
        becomes ``assign_split(sample_id, holdout_fraction, default_split)``: holdout for the share of ids
        that hash below ``holdout_fraction``, else ``default_split``. A sample's split never changes once
        stored (a stored id is skipped even when the row names another split).

        Args:
            samples: Columns of samples_schema: sample_id, image_uri, width, height, box (4 numbers,
                x0 y0 x1 y1 image px), dataset; optional box_source, detector_score, split, created_at.
            default_split: ``"train"`` (human-labelled imports) or ``"pool"`` (unlabelled faces).

        Returns:
            The number of new samples written.
        """
        table = samples_table(samples, self.holdout_fraction, default_split)
        folder = self._fs.path("samples")
        with self._writing(folder):
            table = self._new_samples(table)
            refuse_conflicts(table, holdout_conflicts(table, self._samples_of_images(table)))  # HoldoutLeak
            if table.num_rows:
                self._fs.write_parquet(folder, table)
            return table.num_rows

    def _new_samples(self, table: pa.Table) -> pa.Table:
        table = first_of_each(table, "sample_id")
        return table.filter(pa.array(not_in(table["sample_id"], self._sample_index().ids)))

    def samples(self, split: str | None = None) -> pd.DataFrame:
        """Stored samples (all, or one split), in the order they were added."""
        if split is not None and split not in SPLITS:
            raise StoreError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        t = self._reader.read("samples", self._reader.parts("samples"))
        if split is not None:
            t = t.filter(pc.equal(t["split"], split))
        return to_pandas(t)

    # ================================================================= labels
    def _existing_label_ids(self, parts: list[Part]) -> pa.Array:
        missing = [p for p in parts if p.path not in self._label_ids]
        if missing:
            t = self._reader.read("labels", missing, ["label_id"])
            offsets = np.cumsum([0] + [self._reader.num_rows(p) for p in missing])
            col = t["label_id"].combine_chunks()
            for p, a, b in zip(missing, offsets[:-1], offsets[1:], strict=True):
                self._label_ids[p.path] = col.slice(int(a), int(b - a))
        chunks = [self._label_ids[p.path] for p in parts]
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.string())

    def add_labels(
        self,
        rows: pd.DataFrame,
        landmarks: np.ndarray,
        landmark_confidence: np.ndarray | None = None,
        moved: np.ndarray | None = None,
        visibility: np.ndarray | None = None,
    ) -> LabelIds:
        """Append labels; rows whose ``label_id`` is already stored are skipped (retries are no-ops).

        Args:
            rows: sample_id, source (human | corrected | pseudo), round, and optional scalar columns of
                labels_schema (face_confidence, predicted_nme, level, model_version, annotator, ls_task_id,
                ls_annotation_id, parent_label_id, created_at, label_id). A missing ``label_id`` is made
                deterministically from LABEL_ID_FIELDS (+ the landmarks of human/corrected labels).
            landmarks: (R, N, 2) image px float32, NaN = missing; N is the scheme's.
            landmark_confidence: (R, N) in [0, 1], or None.
            moved: (R, N) bool landmarks a person moved (corrections), or None.
            visibility: (R, N) COCO visibility (0 missing = NaN landmark, 1 occluded, 2 visible), or None.

        Returns:
            The label id of every input row, in order (new or already stored); its ``new`` attribute
            holds the ids this call wrote (:class:`annotations.store.ids.LabelIds`).

        Raises:
            StoreError: bad columns or shapes, or samples the store does not have.
            HoldoutLeak: pseudo or corrected labels for holdout samples.
        """
        table = label_table(rows, landmarks, landmark_confidence, moved, self.scheme.num_landmarks, self.scheme.name,
                            visibility)  # fmt: skip
        ids, new = table["label_id"].to_pylist(), []
        with self._writing():
            pos, split = self._split_codes(table["sample_id"])
            if (pos < 0).any():
                bad = np.flatnonzero(pos < 0)
                unknown = table["sample_id"].take(pa.array(bad[:3])).to_pylist()
                raise StoreError(
                    f"add_labels: {len(bad)} row(s) name samples the store does not have (rows "
                    f"{examples(bad.tolist())}: {examples(unknown)}); add them with add_samples first"
                )
            source = table["source"].to_numpy()
            leak = (split == _HOLDOUT) & (source != "human")
            if leak.any():
                bad = np.flatnonzero(leak)
                raise HoldoutLeak(
                    f"add_labels: {len(bad)} {source[bad[0]]} label(s) for holdout samples (rows "
                    f"{examples(bad.tolist())}, e.g. sample {table['sample_id'][int(bad[0])].as_py()!r}); holdout "
                    "samples are never pseudo-labelled or corrected (docs/store.md section 6): drop them before "
                    "writing (store.samples('holdout') lists them)"
                )
            table = first_of_each(table, "label_id")
            rounds = table["round"].to_numpy()
            src_code = codes_of(table["source"], LABEL_SOURCES)
            all_parts = self._reader.parts("labels")
            for key in np.unique(rounds.astype(np.int64) * 8 + src_code):
                k, s = int(key // 8), LABEL_SOURCES[int(key % 8)]
                sub = table.filter(pa.array((rounds == k) & (src_code == key % 8)))
                existing = self._existing_label_ids([p for p in all_parts if p.round == k and p.source == s])
                sub = sub.filter(pa.array(not_in(sub["label_id"], existing)))
                if sub.num_rows:
                    folder = self._fs.path("labels", f"round={k}", f"source={s}")
                    self._fs.clean_temps(folder, recursive=False)
                    path = self._fs.write_parquet(folder, sub)
                    self._label_ids[path] = sub["label_id"].combine_chunks()
                    new += self._label_ids[path].to_pylist()
        return LabelIds(ids, new)

    def _read_labels(
        self, round_: int | None = None, sources: Sequence[str] | None = None, columns: Sequence[str] | None = None
    ) -> pa.Table:
        return self._reader.read("labels", self._reader.parts("labels", round_, sources), columns)

    def labels(
        self,
        round: int | None = None,  # noqa: A002 - the pipeline's word
        source: str | None = None,
        *,
        retracted: bool = False,
    ) -> LabelView:
        """Every stored label (of one round and/or source) in force, in write order.

        Args:
            round: Only this round.
            source: Only this source.
            retracted: Also retracted labels and the retraction records themselves (the whole log).
        """
        if source is not None and source not in LABEL_SOURCES:
            raise StoreError(f"unknown label source {source!r}; use one of {', '.join(LABEL_SOURCES)}")
        t = self._read_labels(round, None if source is None else (source,))
        if not retracted:
            t = t.filter(pa.array(in_force(t)))
        _, split = self._split_codes(t["sample_id"])
        return build_view(t, None, split, self.scheme.num_landmarks)

    def _current(self, splits: Sequence[str], sources: Sequence[str], for_training: bool) -> LabelView:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown:
            raise StoreError(f"unknown split(s) {unknown}; use {', '.join(SPLITS)}")
        t = self._read_labels(None, sources)
        pos, split = self._split_codes(t["sample_id"])
        keep = (pos >= 0) & np.isin(split, [SPLITS.index(s) for s in splits]) & in_force(t)
        created = t["created_at"].cast(pa.int64()).to_numpy()
        rows = choose_current(pos, priorities(t["source"]), t["round"].to_numpy(), created, keep)
        if for_training and len(rows):
            chosen = t.select(["source", "level"]).take(pa.array(rows))
            review = pc.and_(pc.equal(chosen["source"], "pseudo"), pc.equal(chosen["level"], "review"))
            review = pc.fill_null(review, False).to_numpy(zero_copy_only=False)
            rows = rows[~np.asarray(review, dtype=bool)]
        return build_view(t, rows, split[rows], self.scheme.num_landmarks)

    def current_labels(self, splits: Sequence[str] = ("train", "pool"), for_training: bool = True) -> LabelView:
        """The label each sample trains on: one row per sample, in write order.

        Choice per sample: human > corrected > pseudo, then the newest round, then the newest created_at
        (then the label written last). Holdout samples only when ``splits`` names "holdout".

        Args:
            splits: Splits of the samples to include.
            for_training: Drop samples whose chosen label is a pseudo-label of level "review" (routed to
                people and kept out of training until a person fixes it).
        """
        return self._current(tuple(splits), LABEL_SOURCES, for_training)

    def holdout(self) -> LabelView:
        """Holdout samples with their human label (the newest one per sample)."""
        return self._current(("holdout",), ("human",), for_training=False)

    def pseudo_labels(self, round: int) -> LabelView:  # noqa: A002
        """The pseudo-labels of one round, with their confidences and levels."""
        return self.labels(round=round, source="pseudo")

    def pool_unlabeled(self) -> pd.DataFrame:
        """Pool samples without a human or corrected label (what pseudo-labelling works on)."""
        people = self._read_labels(None, ("human", "corrected"), ["sample_id", "label_id", "retracts"])
        done = people.filter(pa.array(in_force(people)))["sample_id"]
        t = self._reader.read("samples", self._reader.parts("samples"))
        t = t.filter(pc.equal(t["split"], "pool"))
        return to_pandas(t.filter(pa.array(not_in(t["sample_id"], done.combine_chunks()))))

    def lineage(self, sample_id: str) -> LabelView:
        """Every label the sample ever had, oldest first, with who/what made it (retractions included).

        Who/what: ``source``, ``round``, ``model_version``, ``annotator``, ``ls_task_id``/``ls_annotation_id``,
        ``parent_label_id`` (the pseudo-label a correction fixed), ``created_at``.
        """
        parts = self._reader.parts("labels")
        ids = self._reader.read("labels", parts, ["sample_id"])["sample_id"]
        hits = np.flatnonzero(pc.equal(ids, sample_id).to_numpy(zero_copy_only=False))
        t = self._reader.read("labels", [], None)
        if len(hits):
            # read only the parts that hold the sample, then keep its rows
            offsets = np.cumsum([0] + [self._reader.num_rows(p) for p in parts])
            which = np.unique(np.searchsorted(offsets, hits, side="right") - 1)
            t = self._reader.read("labels", [parts[i] for i in which])
            t = t.filter(pc.equal(t["sample_id"], sample_id))
        order = np.lexsort((np.arange(t.num_rows), t["round"].to_numpy(), t["created_at"].cast(pa.int64()).to_numpy()))
        t = t.take(pa.array(order, pa.int64()))
        _, split = self._split_codes(t["sample_id"])
        return build_view(t, None, split, self.scheme.num_landmarks)

    # ================================================================ reviews
    def add_reviews(self, rows: pd.DataFrame) -> int:
        """Append review events (pushed | completed | skipped | rejected | retracted) that change a state.

        Args:
            rows: sample_id, round, status and optional project_id, task_id, label_id, annotation_id,
                note, updated_at (default now), annotated_at. An event is identified by every column but
                updated_at and note; one equal to its sample's latest event is skipped (a retried write),
                an earlier state coming back is written (see ``new_states`` in annotations.store._convert).

        Returns:
            The number of new events written.

        Raises:
            HoldoutLeak: a holdout sample (holdout faces are never sent to review).
        """
        table = reviews_table(rows)
        folder = self._fs.path("reviews")
        with self._writing(folder):
            pos, split = self._split_codes(table["sample_id"])
            if (pos < 0).any():
                bad = table["sample_id"].filter(pa.array(pos < 0)).to_pylist()
                raise StoreError(
                    f"add_reviews: {len(bad)} row(s) name samples the store does not have ({examples(bad)}); "
                    "only stored samples can be reviewed"
                )
            if (split == _HOLDOUT).any():
                bad = table["sample_id"].filter(pa.array(split == _HOLDOUT)).to_pylist()
                raise HoldoutLeak(
                    f"add_reviews: {len(bad)} holdout sample(s) ({examples(bad)}); holdout faces are never sent "
                    "to review (docs/store.md section 6): leave them out of the selection"
                )
            old = self._reader.read("reviews", self._reader.parts("reviews"), [*REVIEW_KEY, "updated_at"])
            table = new_states(table, old, REVIEW_KEY)  # a state log: only what changes a sample's state
            if table.num_rows:
                self._fs.write_parquet(folder, table)
            return table.num_rows

    def _append_events(self, name: str, folder: str, table: pa.Table, key: Sequence[str]) -> int:
        keys = natural_keys(table, key)
        table = first_of_each(table.append_column("_key", keys), "_key")
        old = self._reader.read(name, self._reader.parts(name), list(key))
        table = table.filter(pa.array(not_in(table["_key"], natural_keys(old, key).combine_chunks())))
        table = table.drop_columns(["_key"])
        if table.num_rows:
            self._fs.write_parquet(folder, table)
        return table.num_rows

    def reviews(self, latest: bool = True) -> pd.DataFrame:
        """Review events; with ``latest`` only the newest per sample (by updated_at, then write order)."""
        t = self._reader.read("reviews", self._reader.parts("reviews"))
        if latest and t.num_rows:
            group = pc.dictionary_encode(t["sample_id"].combine_chunks()).indices.to_numpy()
            t = t.take(pa.array(latest_per_group(group, t["updated_at"].cast(pa.int64()).to_numpy())))
        return to_pandas(t)

    def in_review(self) -> pd.DataFrame:
        """Samples now with reviewers: latest review event per sample has status "pushed" (never holdout)."""
        latest = self.reviews(latest=True)
        if latest.empty:
            return latest
        _, split = self._split_codes(pa.array(latest["sample_id"].to_numpy(dtype=object), pa.string()))
        keep = (latest["status"].to_numpy(dtype=object) == "pushed") & (split != _HOLDOUT)
        return latest[keep].reset_index(drop=True)

    # ================================================================ rejects
    def add_rejects(self, rows: pd.DataFrame) -> int:
        """Record inputs that could not be used, with the reason; repeated rows are skipped.

        Args:
            rows: stage, source (file or URI), reason, and optional location, sample_id, round, created_at.
        """
        table = rejects_table(rows)
        folder = self._fs.path("rejects")
        with self._writing(folder):
            return self._append_events("rejects", folder, table, REJECT_KEY)

    def rejects(self) -> pd.DataFrame:
        """Every reject, in write order."""
        return to_pandas(self._reader.read("rejects", self._reader.parts("rejects")))

    # ================================================================== check
    def check(self) -> list[str]:
        """Problems found, each naming the file: unknown, foreign, truncated or misplaced files, labels of
        unknown samples, label ids stored twice, unreadable round bookkeeping. Empty when all is well."""
        problems = []
        for info in self._fs.list(self._fs.root, recursive=False):
            if not is_hidden(info.base_name) and info.base_name not in _ROOT_ENTRIES:
                problems.append(f"{self._fs.show(info.path)}: unknown entry at the store root; move it out")
        for table in TABLES:
            problems += self._reader.problems(table)
        problems += self._check_labels()
        problems += self._check_rounds()
        return problems

    def _check_labels(self) -> list[str]:
        found, _ = self._reader.scan("labels")
        good = []
        for p in found:
            try:
                self._reader.check_part("labels", p)
                good.append(p)
            except CorruptFile:
                pass  # reported by problems()
        try:
            t = self._reader.read("labels", good, ["label_id", "sample_id"])
            self._reader.parts("samples")
        except CorruptFile:
            return []  # reported above
        out = []
        ids = t["label_id"].combine_chunks()
        dup = len(ids) - len(pc.unique(ids))
        if dup:
            out.append(f"{self._fs.show(self._fs.path('labels'))}: {dup} label id(s) stored more than once")
        pos, _ = self._split_codes(t["sample_id"])
        if (pos < 0).any():
            bad = t["sample_id"].filter(pa.array(pos < 0)).to_pylist()
            out.append(
                f"{self._fs.show(self._fs.path('labels'))}: {len(bad)} label(s) of samples the store does not have "
                f"({examples(sorted(set(bad)))})"
            )
        return out
