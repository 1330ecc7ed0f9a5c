"""The Label Studio project of a store: create or reuse it, give it access to the images.

One store has one review project. Its id and server are recorded in the store's settings
(``labelstudio.project_id``, ``labelstudio.url``); a store moved to another server finds or creates
its project there by title. The project's labeling config is generated from the store's scheme; an
existing project whose landmark labels differ from the scheme is refused rather than silently mixed.
A project made before landmarks had anatomical names labels them ``lm_00``...: it is accepted, and
its tasks are built and read with its own labels (:attr:`ReviewProject.labels`).

Images (docs/review.md section 6): images of a local store are served by Label Studio's local files serving,
which needs the server started with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and a document
root, a task URL ``/data/local-files/?d=<path relative to the root>``, and a Local Files import storage
on the project whose path is a subfolder of the root containing the image (a storage grants access to
everything below its path; it need not be synced). Images already at a URL (``http(s)://``,
``s3://``, ``gs://``, ``azure-blob://``) are passed as they are: Label Studio loads web URLs directly
and resolves bucket URLs through a cloud storage the team connects to the project.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from annotations.review.client import ENV_DOCUMENT_ROOT, LabelStudioClient, ReviewConfigError, ReviewRequestError
from annotations.review.config import CONTROL_NAME, config_labels, labeling_config
from pipnet_core.schemes import Scheme, legacy_landmark_names

__all__ = [
    "SETTING_IMPORT_TITLE",
    "SETTING_PROJECT_ID",
    "SETTING_URL",
    "ImageAccess",
    "ReviewProject",
    "default_title",
    "ensure_image_access",
    "ensure_project",
    "image_location",
]

log = logging.getLogger(__name__)

SETTING_PROJECT_ID = "labelstudio.project_id"
SETTING_URL = "labelstudio.url"
SETTING_IMPORT_TITLE = "labelstudio.import_file_title"  # the project title an import file told the team to create
_URL_SCHEMES = ("http", "https", "s3", "gs", "gcs", "azure-blob", "data")


@dataclass(frozen=True)
class ReviewProject:
    """A store's review project.

    Attributes:
        id: Label Studio project id.
        title: Its title.
        created: Whether this call created it.
        labels: Its landmark labels in scheme order (the scheme's names, or ``lm_00``... in an older project).
        label_config: Its labeling config (predictions are validated against it).
    """

    id: int
    title: str
    created: bool = False
    labels: tuple[str, ...] = ()
    label_config: str = field(default="", repr=False)


def default_title(store: Any) -> str:
    """``pipstc <store folder name> (<scheme>)``, at least 3 characters as Label Studio requires."""
    name = Path(str(store.url).rstrip("/")).name or "store"
    return f"pipstc {name} ({store.scheme.name})"


def _check_config(project: dict[str, Any], scheme: Scheme) -> tuple[str, ...]:
    """The project's landmark labels, if they are the scheme's (anatomical or legacy ``lm_XX``) in order."""
    labels = config_labels(project.get("label_config") or "")
    if labels in (list(scheme.landmark_names), list(legacy_landmark_names(scheme.num_landmarks))):
        return tuple(labels or ())
    raise ReviewConfigError(
        f"Label Studio project {project.get('id')} ({project.get('title')!r}) does not label the {scheme.name}"
        f" landmarks in order (its '{CONTROL_NAME}' KeyPointLabels has {len(labels or [])} labels, the scheme"
        f" {scheme.num_landmarks}); give the store its own project (another title) or set its labeling config"
        " to the output of `pipstc labelstudio config`"
    )


def ensure_project(
    store: Any,
    client: LabelStudioClient,
    *,
    title: str | None = None,
    reject_choices: bool = True,
) -> ReviewProject:
    """The store's review project on ``client``'s server: the recorded one, else one titled ``title``,
    else a new one. Records its id and the server URL in the store.

    Raises:
        ReviewConfigError: the project found does not label the store's scheme.
    """
    scheme = store.scheme
    recorded = store.get_setting(SETTING_PROJECT_ID)
    same_server = store.get_setting(SETTING_URL) in (None, client.url)
    project: dict[str, Any] | None = None
    if recorded is not None and same_server:
        try:
            project = client.project(int(recorded))
        except ReviewRequestError as e:
            if e.status_code != 404:
                raise
            log.warning("Label Studio project %s recorded in the store is gone; looking it up by title", recorded)
    title = title or (project or {}).get("title") or default_title(store)
    created = False
    if project is None:
        found = client.projects(title=title)
        if found:
            project = client.project(int(found[0]["id"]))
        else:
            project = client.create_project(
                title,
                labeling_config(scheme, reject_choices=reject_choices),
                description=f"pipstc review of {scheme.num_landmarks} {scheme.name} landmarks; store {store.url}",
                show_skip_button=True,
            )
            created = True
            log.info("created Label Studio project %s (%r)", project["id"], title)
    labels = _check_config(project, scheme)
    pid = int(project["id"])
    if recorded != pid:
        store.set_setting(SETTING_PROJECT_ID, pid)
    if store.get_setting(SETTING_URL) != client.url:
        store.set_setting(SETTING_URL, client.url)
    return ReviewProject(id=pid, title=str(project.get("title", title)), created=created, labels=labels,
                         label_config=str(project.get("label_config") or ""))  # fmt: skip


@dataclass(frozen=True)
class ImageAccess:
    """How task images reach Label Studio.

    Attributes:
        document_root: The server's local files document root, as a local path; None: URLs only.
    """

    document_root: Path | None = None

    @classmethod
    def from_env(cls, document_root: str | os.PathLike[str] | None = None) -> ImageAccess:
        """``document_root`` or ``$PIPSTC_LABEL_STUDIO_DOCUMENT_ROOT`` (unset: only URL images work)."""
        root = document_root or os.environ.get(ENV_DOCUMENT_ROOT)
        return cls(Path(root).resolve() if root else None)


def _local_path(uri: str, store_url: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # "C:" is a drive, not a scheme
        return None
    p = Path(uri)
    if not p.is_absolute():
        base = urlparse(store_url)
        base_path = Path(base.path if base.scheme == "file" else store_url)
        p = base_path / p
    return p.resolve()


def image_location(uri: str, store_url: str, access: ImageAccess) -> tuple[str, Path | None]:
    """The task ``data.image`` for an image URI and, for local files, the storage folder it needs.

    Returns:
        ``(url, storage_dir)``: ``storage_dir`` is the first-level folder under the document root that
        holds the image (None for URL images).

    Raises:
        ReviewConfigError: a local image but no document root, or an image outside a subfolder of it.
    """
    local = _local_path(uri, store_url)
    if local is None:
        if urlparse(uri).scheme in _URL_SCHEMES:
            return uri, None
        raise ReviewConfigError(f"image {uri!r}: Label Studio cannot load this URL scheme; use http(s)/s3/gs URLs")
    root = access.document_root
    if root is None:
        raise ReviewConfigError(
            f"image {local} is a local file: set {ENV_DOCUMENT_ROOT} to the folder the Label Studio server serves"
            " local files from (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, started with"
            " LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true), and keep the images in a subfolder of it"
        )
    try:
        rel = local.relative_to(root)
    except ValueError:
        raise ReviewConfigError(
            f"image {local} is not under the Label Studio document root {root} ({ENV_DOCUMENT_ROOT}); move or link"
            " the images into a subfolder of it"
        ) from None
    if len(rel.parts) < 2:
        raise ReviewConfigError(
            f"image {local} lies directly in the document root {root}; Label Studio serves only files in a subfolder"
            " of it (docs/review.md section 6): move the images into e.g. {root}/faces/"
        )
    return "/data/local-files/?d=" + quote(rel.as_posix(), safe="/"), root / rel.parts[0]


def ensure_image_access(client: LabelStudioClient, project_id: int, folders: set[Path]) -> int:
    """Make sure the project has a Local Files storage covering each folder; returns how many were added."""
    if not folders:
        return 0
    have = [Path(s.get("path", "")) for s in client.local_storages(project_id)]
    added = 0
    for folder in sorted(folders):
        if any(folder == h or h in folder.parents for h in have):
            continue
        try:
            client.create_local_storage(project_id, str(folder), title=f"pipstc {folder.name}")
        except ReviewRequestError as e:
            raise ReviewConfigError(
                f"Label Studio refused local files access to {folder} ({e}); start the server with"
                " LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to"
                f" the folder above it, the same as {ENV_DOCUMENT_ROOT}"
            ) from None
        have.append(folder)
        added += 1
    return added
