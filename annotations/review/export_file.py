"""Review without a Label Studio server: write the tasks as a Label Studio import file.

When no ``PIPSTC_LABEL_STUDIO_URL`` is configured the review step still produces something a person
can use: a folder with ``tasks.json`` (the same tasks and predictions a push would send, in Label
Studio's JSON import format, docs/review.md section 5.1), ``labeling_config.xml`` and ``README.txt`` saying
how to serve the images and import the file. Local images are addressed as local files under a
document root chosen as the folder above the images' common folder, so that one Local Files storage
on that common folder covers them all (Label Studio serves only files in a subfolder of its root).
Nothing is recorded as pushed: once the tasks are imported and pipstc is pointed at the server, a
push finds them by sample id (and records them), and pull brings the corrections in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from annotations.review.client import ENV_DOCUMENT_ROOT, ENV_TOKEN, ENV_URL
from annotations.review.config import labeling_config
from annotations.review.project import SETTING_IMPORT_TITLE, ImageAccess, _local_path, default_title
from annotations.review.tasks import build_task, collect_items, validate_tasks
from annotations.store.views import LabelView

__all__ = ["ExportReport", "write_import_file"]


@dataclass
class ExportReport:
    """The import file written and what the user should do with it."""

    path: Path
    tasks: int
    failed: int = 0
    refused: dict[str, str] = field(default_factory=dict)
    document_root: Path | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for logs and CLI output."""
        return {
            "import_file": str(self.path),
            "pushed": 0,
            "tasks": self.tasks,
            "failed": self.failed,
            "refused": len(self.refused),
            "document_root": None if self.document_root is None else str(self.document_root),
            "message": self.message,
        }


def _document_root(store: Any, sample_ids: Sequence[str]) -> Path | None:
    """The folder above the common folder of the samples' local images (None: no local images)."""
    samples = store.samples().set_index("sample_id")
    folders = set()
    for sid in sample_ids:
        if sid in samples.index:
            local = _local_path(str(samples.at[sid, "image_uri"]), str(store.url))
            if local is not None:
                folders.add(str(local.parent))
    if not folders:
        return None
    common = Path(os.path.commonpath(sorted(folders)))
    return common.parent if common.parent != common else common


def write_import_file(
    store: Any,
    sample_ids: Sequence[str],
    round: int,  # noqa: A002 - the pipeline's word
    labels: LabelView | Sequence[str] | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    document_root: str | os.PathLike[str] | None = None,
) -> ExportReport:
    """Write the review tasks of ``sample_ids`` as a Label Studio import file.

    Args:
        store: The label store.
        sample_ids: Faces to review.
        round: The round whose labels are shown.
        labels: The labels to show (LabelView, label ids, or None for the round's pseudo-labels).
        out_dir: Folder to write (default ``./labelstudio-review-round-<k>``).
        document_root: The Label Studio document root to address local images from (default
            ``$PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT``, else the folder above the images' common folder).

    Returns:
        The report; ``message`` tells the user how to import the file.
    """
    out = Path(out_dir) if out_dir is not None else Path.cwd() / f"labelstudio-review-round-{int(round)}"
    root_given = document_root or os.environ.get(ENV_DOCUMENT_ROOT)
    root = Path(root_given).resolve() if root_given else _document_root(store, list(sample_ids))
    selection = collect_items(store, sample_ids, int(round), labels, ImageAccess(root))
    scheme = store.scheme
    config = labeling_config(scheme)
    tasks = [build_task(it, scheme) for it in selection.items]
    errors = validate_tasks(tasks, config)
    good = [t for t, err in zip(tasks, errors, strict=True) if not err]
    storages = sorted({str(it.storage_dir) for it in selection.items if it.storage_dir is not None})
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tasks.json"
    tmp = out / ".tasks.json.tmp"
    tmp.write_text(json.dumps(good))
    os.replace(tmp, path)
    (out / "labeling_config.xml").write_text(config)
    title = default_title(store)
    if good and store.get_setting(SETTING_IMPORT_TITLE) != title:
        store.set_setting(SETTING_IMPORT_TITLE, title)  # a later pull may adopt the project of that title
    lines = [
        f"{len(good)} faces to review, written to {path}.",
        "To review them in Label Studio:",
    ]
    if root is not None:
        lines.append(
            f"  1. start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and"
            f" LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}"
        )
    else:
        lines.append("  1. start Label Studio (the images are URLs; nothing to serve)")
    lines += [
        f"  2. create a project titled {title!r} with the labeling config in {out / 'labeling_config.xml'}",
        "     (`pipstc labelstudio config` prints it too)",
    ]
    if storages:
        lines.append(
            "  3. Settings > Cloud Storage > Add Source Storage > Local files, path "
            + " and ".join(storages)
            + " (do not sync it; it only grants access to the images)"
        )
    lines += [
        f"  4. Import {path}",
        f"  5. then set {ENV_URL}, {ENV_TOKEN}"
        + (f" and {ENV_DOCUMENT_ROOT}={root}" if root is not None else "")
        + " and run `pipstc review pull` to bring the corrections in (it finds the project by its title).",
    ]
    message = "\n".join(lines)
    (out / "README.txt").write_text(message + "\n")
    return ExportReport(
        path=path,
        tasks=len(good),
        failed=len(tasks) - len(good),
        refused=selection.refused,
        document_root=root,
        message=message,
    )
