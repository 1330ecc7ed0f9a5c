"""Rows taken from a label view (arrow-backed pandas columns, several chunks) can be written back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from annotations.store import Store
from pipnet_core.schemes import get_scheme


def test_label_view_rows_with_chunked_columns_write_back(tmp_path: Path) -> None:
    store = Store.create(str(tmp_path / "s"), get_scheme("aflw"))
    ids = [f"face{i}" for i in range(30)]
    store.add_samples(pd.DataFrame({"sample_id": ids, "image_uri": ids, "width": 10, "height": 10,
                                    "box": [[0.0, 0.0, 5.0, 5.0]] * 30, "box_source": "given", "split": "train",
                                    "dataset": "x"}))  # fmt: skip
    landmarks = np.random.default_rng(0).random((30, 19, 2), dtype=np.float32)
    for part in range(3):  # three part files -> the view's columns come back in three chunks
        rows = slice(10 * part, 10 * part + 10)
        store.add_labels(pd.DataFrame({"sample_id": ids[rows], "source": "human", "round": 0}), landmarks[rows])
    view = store.labels(source="human")
    rows = view.frame[["sample_id"]].assign(source="corrected", round=1)
    assert isinstance(pa.array(rows["sample_id"], from_pandas=True), pa.ChunkedArray)
    assert len(store.add_labels(rows, view.landmarks)) == 30
    corrected = store.labels(source="corrected")
    order = np.argsort(corrected.frame["sample_id"].to_numpy())
    np.testing.assert_array_equal(
        corrected.landmarks[order], view.landmarks[np.argsort(view.frame["sample_id"].to_numpy())]
    )
