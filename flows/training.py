"""The train step of a round: the store's training set into a dataset, trained into the round folder."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from annotations.ingest.crops import fit_crop_mapping, training_crop_boxes
from annotations.store import Store
from annotations.store.training import training_set
from flows.checkpoints import checkpoint_path, is_local
from flows.config import STCConfig

__all__ = ["train_round"]


def train_round(store_url: str, k: int, cfg: STCConfig, progress: bool = True) -> str:
    """Train round k's model into the round folder; resumes an interrupted training of the same round."""
    from pipnet_core.data import FaceDataset
    from pipnet_core.train import train

    store = Store.open(store_url)
    data = training_set(store, k)
    if not len(data):
        raise RuntimeError(f"round {k}: no labeled faces to train on in {store_url}; import human labels first")
    init_from = checkpoint_path(store, k - 1) if (k > 0 and cfg.warm_starts()) else None
    tcfg = cfg.round_train(k, init_from=init_from)
    dataset = FaceDataset(
        image_paths=data.image_uris,
        cache_crops=True,
        crop_boxes=training_crop_boxes(data.landmarks, cfg.crop_scale),
        landmarks=data.landmarks,
        levels=data.levels,
        input_size=tcfg.input_size,
        flip=store.scheme.flip,
        augment=tcfg.augment,
    )
    out = checkpoint_path(store, k) if is_local(store) else os.path.join(tempfile.mkdtemp(), "model.pt")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    train(tcfg, dataset, store.scheme, out, resume=True, progress=progress)
    if not is_local(store):
        store.write_round_file(k, "model.pt", Path(out).read_bytes())
    store.write_round_json(k, "boxmap.json", fit_crop_mapping(store).to_dict())
    store.write_round_json(k, "training_set.json", {"faces": len(data), "levels": data.counts()})
    return out
