"""Finding, checking and reading the committed Parquet parts of the store's tables.

Readers see only ``part-*.parquet`` files: temporary files of writes in progress (``_tmp-*``) and dot
files are skipped, so a reader never sees half a file. Any other file in a table folder is a problem:
a reader refuses to go on (:class:`CorruptFile`, naming the file) rather than silently skip or misread
it, and :meth:`PartReader.problems` lists all of them for ``Store.check()``. Each part's footer is
checked once per process (table tag, schema version, columns, and for labels that its rows belong to
its ``round=<k>/source=<s>`` folder); parts never change after their rename, so the check is cached
by path and size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from annotations.store._fs import StoreFS, is_hidden
from annotations.store.errors import CorruptFile
from annotations.store.schema import LABEL_SOURCES, SchemaMismatch, check_table_schema, table_schema

__all__ = ["TABLES", "Part", "PartReader"]

TABLES = ("samples", "labels", "reviews", "rejects")
_PART = re.compile(r"^part-[0-9A-Za-z_.-]+\.parquet$")
_ROUND = re.compile(r"^round=(0|[1-9][0-9]*)$")
_SOURCE = re.compile(r"^source=(" + "|".join(LABEL_SOURCES) + r")$")


@dataclass(frozen=True)
class Part:
    """One committed Parquet file of a table; ``round``/``source`` for label partitions."""

    path: str
    size: int
    round: int | None = None
    source: str | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class PartReader:
    """Reads the tables of one store (see the module docstring)."""

    def __init__(self, sfs: StoreFS, num_landmarks: int) -> None:
        self.sfs = sfs
        self.num_landmarks = num_landmarks
        self._checked: dict[str, int] = {}
        self._num_rows: dict[str, int] = {}

    def schema(self, table: str) -> pa.Schema:
        return table_schema(table, self.num_landmarks if table == "labels" else None)

    # ---------------------------------------------------------------- listing
    def scan(self, table: str) -> tuple[list[Part], list[str]]:
        """Committed parts of ``table`` in write order, and the unknown files/folders met on the way."""
        base = self.sfs.path(table)
        parts: list[Part] = []
        problems: list[str] = []
        for info in self.sfs.list(base, recursive=True):
            segs = info.path[len(base) + 1 :].split("/")
            if any(is_hidden(s) for s in segs):
                continue
            where = self.sfs.show(info.path)
            if info.type == pafs.FileType.Directory:
                if table != "labels" or len(segs) > 2 or not (_ROUND if len(segs) == 1 else _SOURCE).match(segs[-1]):
                    expected = "round=<k>/source=<human|corrected|pseudo>" if table == "labels" else "no sub-folders"
                    problems.append(f"{where}: unexpected folder in the {table} table (expected {expected}); move it")
                continue
            depth = 3 if table == "labels" else 1
            if len(segs) != depth or not _PART.match(segs[-1]):
                problems.append(
                    f"{where}: unknown file in the {table} table (not a part pipstc wrote); move it out of the store"
                )
                continue
            if table == "labels":
                rnd, src = _ROUND.match(segs[0]), _SOURCE.match(segs[1])
                if not (rnd and src):
                    continue  # its folder is reported above
                parts.append(Part(info.path, info.size, int(rnd.group(1)), src.group(1)))
            else:
                parts.append(Part(info.path, info.size))
        parts.sort(key=lambda p: p.name)  # names start with the UTC write time: write order
        return parts, problems

    def parts(self, table: str, round_: int | None = None, sources: Sequence[str] | None = None) -> list[Part]:
        """Checked parts of ``table`` (label parts filtered by round and source).

        Raises:
            CorruptFile: an unknown file in the table, or a part that is truncated/foreign/of another schema.
        """
        found, problems = self.scan(table)
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more problem(s); Store.check() lists them)" if len(problems) > 1 else ""
            raise CorruptFile(first.split(": ", 1)[0], first + more)
        if round_ is not None:
            found = [p for p in found if p.round == round_]
        if sources is not None:
            found = [p for p in found if p.source in sources]
        for p in found:
            self.check_part(table, p)
        return found

    # --------------------------------------------------------------- checking
    def check_part(self, table: str, part: Part) -> None:
        """Check a part's footer once (cached by path and size).

        Raises:
            CorruptFile: names the file and the fix.
        """
        if self._checked.get(part.path) == part.size:
            return
        where = self.sfs.show(part.path)
        try:
            meta = pq.read_metadata(part.path, filesystem=self.sfs.fs)
            schema = meta.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as e:
            raise CorruptFile(
                where,
                f"{where}: not a readable Parquet file ({e}); it is truncated or not Parquet. A write pipstc "
                "interrupts never leaves a part-*.parquet behind, so this file was damaged or copied in: move it "
                "out of the store",
            ) from None
        try:
            check_table_schema(schema, table, where, self.num_landmarks if table == "labels" else None)
        except SchemaMismatch as e:
            raise CorruptFile(where, str(e)) from None
        if part.round is not None:
            self._check_partition(meta, schema, part, where)
        self._checked[part.path] = part.size
        self._num_rows[part.path] = meta.num_rows

    def num_rows(self, part: Part) -> int:
        """Rows in a part (from its footer)."""
        if part.path not in self._num_rows:
            self._num_rows[part.path] = pq.read_metadata(part.path, filesystem=self.sfs.fs).num_rows
        return self._num_rows[part.path]

    @staticmethod
    def _check_partition(meta: pq.FileMetaData, schema: pa.Schema, part: Part, where: str) -> None:
        """Rows of a label part must belong to its round=<k>/source=<s> folder (row-group statistics)."""
        expect = {"round": part.round, "source": part.source}
        for name, value in expect.items():
            col = schema.get_field_index(name)
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(col).statistics
                if stats is None or not stats.has_min_max:
                    continue
                if stats.min != value or stats.max != value:
                    raise CorruptFile(
                        where,
                        f"{where}: holds {name} {stats.min!r}..{stats.max!r} but sits in the folder for {name} "
                        f"{value!r}; move it to its own partition folder or out of the store",
                    )

    def problems(self, table: str) -> list[str]:
        """Every problem of ``table``: unknown files and folders, and parts that fail their check."""
        found, problems = self.scan(table)
        for p in found:
            try:
                self.check_part(table, p)
            except CorruptFile as e:
                problems.append(str(e))
        return problems

    # ---------------------------------------------------------------- reading
    def read(self, table: str, parts: Sequence[Part], columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of ``parts`` (in order), only ``columns``; an empty table of the schema when none.

        Raises:
            CorruptFile: a part fails to decode; names it.
        """
        schema = self.schema(table)
        cols = list(columns) if columns is not None else list(schema.names)
        if not parts:
            return schema.empty_table().select(cols)
        paths = [p.path for p in parts]
        try:
            dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=self.sfs.fs)
            return dataset.to_table(columns=cols)
        except (pa.ArrowException, OSError) as e:
            for p in parts:  # find the culprit so the message names it
                try:
                    with self.sfs.fs.open_input_file(p.path) as f:
                        pq.ParquetFile(f).read(columns=cols)
                except (pa.ArrowException, OSError) as inner:
                    where = self.sfs.show(p.path)
                    raise CorruptFile(where, f"{where}: cannot be decoded ({inner}); move it out of the store") from e
            raise CorruptFile(self.sfs.show(self.sfs.path(table)), f"{table}: reading failed: {e}") from e
