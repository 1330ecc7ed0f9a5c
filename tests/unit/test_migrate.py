"""Stores written by pipstc at schema version 1 open after today's schema changes (issue 11 item 23).

tests/fixtures/store_v1 was written by the code of commit 53138a1 (tests/fixtures/make_store_v1.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from annotations.store import SchemaVersionError, Store
from annotations.store.migrate import MIGRATED_COLUMNS
from annotations.store.schema import SCHEMA_VERSION
from flows.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IMAGE_ROOT = Path("/tmp/pipstc-fixture-v1/images")  # where the fixture's samples say their images are


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    IMAGE_ROOT.mkdir(parents=True, exist_ok=True)
    for image in (FIXTURES / "store_v1_images").iterdir():
        shutil.copyfile(image, IMAGE_ROOT / image.name)
    return Path(shutil.copytree(FIXTURES / "store_v1", tmp_path / "store"))


def _old_table(store: Path, table: str) -> dict[str, list]:
    parts = sorted(store.glob(f"_migrations/v1/{table}/**/part-*.parquet"), key=lambda p: p.name)
    rows: dict[str, list] = {}
    for p in parts:
        for k, v in pq.read_table(p).to_pydict().items():
            rows.setdefault(k, []).extend(v)
    return rows


def test_a_version_1_store_is_migrated_on_open_and_reads_back_the_same_labels(old_store: Path) -> None:
    assert json.loads((old_store / "store.json").read_text())["schema_version"] == 1
    store = Store.open(old_store)
    meta = json.loads((old_store / "store.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["migrations"][-1]["from"] == 1
    assert store.check() == []
    old = _old_table(old_store, "labels")  # the backup: the files exactly as version 1 wrote them
    assert len(old["label_id"]) == 6
    view = store.labels()
    order = [list(view.frame["label_id"]).index(i) for i in old["label_id"]]
    got = view.take(order)
    np.testing.assert_array_equal(got.landmarks, np.asarray(old["landmarks"], dtype=np.float32))
    for col in ("sample_id", "source", "level", "model_version", "parent_label_id", "annotator"):
        assert [None if pd.isna(v) else v for v in got.frame[col]] == old[col], col
    assert len(store.reviews(latest=False)) == 2 and store.rejects()["reason"].tolist() == ["landmark 2 is NaN"]
    assert store.read_round_json(0, "config.json") == {"schedule": "paper", "epochs": 2}


def test_the_image_digest_is_computed_where_the_image_is_readable_else_null_with_a_note(old_store: Path) -> None:
    from annotations.store.ids import image_digest

    store = Store.open(old_store)
    samples = store.samples().set_index("image_uri")
    for name in ("face0.png", "face1.png", "face2.png", "face3.png"):
        assert samples.loc[str(IMAGE_ROOT / name), "image_digest"] == image_digest((IMAGE_ROOT / name).read_bytes())
    assert pd.isna(samples.loc[str(IMAGE_ROOT / "face4.png"), "image_digest"])
    notes = json.loads((old_store / "store.json").read_text())["migrations"][-1]["notes"]
    assert len(notes) == 1 and "samples.image_digest is null for 1 of 5 rows (image unreadable: 1" in notes[0]


def test_an_image_changed_since_import_gets_no_digest(old_store: Path) -> None:
    (IMAGE_ROOT / "face1.png").write_bytes((IMAGE_ROOT / "face0.png").read_bytes())  # (the fixture restores it)
    store = Store.open(old_store)
    digest = store.samples().set_index("image_uri")["image_digest"]
    assert pd.isna(digest[str(IMAGE_ROOT / "face1.png")]) and not pd.isna(digest[str(IMAGE_ROOT / "face0.png")])
    notes = json.loads((old_store / "store.json").read_text())["migrations"][-1]["notes"]
    assert "image changed since import: 1" in notes[0] and "image unreadable: 1" in notes[0]


def test_pipstc_migrate_and_a_refusal_when_auto_migration_is_off(
    old_store: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PIPSTC_AUTO_MIGRATE", "0")
    with pytest.raises(SchemaVersionError, match="pipstc migrate"):
        Store.open(old_store)
    assert json.loads((old_store / "store.json").read_text())["schema_version"] == 1  # left untouched
    assert main(["migrate", str(old_store)]) == 0
    out = capsys.readouterr().out
    assert "migrated from schema version 1" in out and "_migrations/v1" in out
    assert main(["migrate", str(old_store)]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    assert len(Store.open(old_store).labels()) == 6


def test_an_interrupted_migration_finishes_on_the_next_open(old_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import annotations.store.migrate as migrate

    real, calls = migrate._rewrite_part, []

    def dies_on_the_third(*args: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed mid-migration")
        real(*args)

    monkeypatch.setattr(migrate, "_rewrite_part", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        Store.open(old_store)
    assert json.loads((old_store / "store.json").read_text())["schema_version"] == 1
    monkeypatch.setattr(migrate, "_rewrite_part", real)
    store = Store.open(old_store)
    assert len(store.labels()) == 6 and len(store.samples()) == 5 and store.check() == []


def test_every_added_column_is_in_the_schema() -> None:
    from annotations.store.schema import table_schema

    for c in MIGRATED_COLUMNS:
        assert c.column in table_schema(c.table, 5).names and 1 < c.version <= SCHEMA_VERSION
