"""Real services for integration tests: one Label Studio server per test session.

The server is started from its own virtual environment (``$PIPSTC_LABEL_STUDIO_BIN``, else
``.venv-labelstudio/bin/label-studio`` under the repository root) by
:func:`tools.labelstudio_server.start_label_studio`: 127.0.0.1, a free port, a fresh 40-hex legacy
token, local files served from a document root in the session's temporary folder. The first session
on a machine migrates a fresh database (~45-70 s on two busy cores) and caches it under
``.work/ls-template/<version>``; later sessions copy that and are up in ~5 s.

A missing binary or a server that does not come up is ``service_missing``: a skip locally, a failure
under ``CI=true``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from annotations.review.client import LabelStudioClient, connect  # noqa: E402 - after the path fix below
from tools.labelstudio_server import (
    LabelStudioServer,
    ServerStartError,
    find_label_studio_binary,
    start_label_studio,
)

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.` imports also work when pytest is not started from the repo root
    sys.path.insert(0, str(ROOT))

from tests.conftest import service_missing  # noqa: E402

TEMPLATE_DIR = ROOT / ".work" / "ls-template"


def start_test_server(work: Path) -> LabelStudioServer:
    """A Label Studio server for tests in ``work``; service_missing when it cannot run."""
    binary = find_label_studio_binary()
    if binary is None:
        why = "no label-studio executable (set PIPSTC_LABEL_STUDIO_BIN or run scripts/setup.sh --labelstudio)"
        service_missing("Label Studio", why)
    try:
        return start_label_studio(work, binary=binary, template_dir=TEMPLATE_DIR)
    except ServerStartError as e:
        service_missing("Label Studio", f"the server did not start: {e}")
        raise  # unreachable: service_missing skips or fails


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """The session's Label Studio server (``url``, ``token``, ``document_root``, ``pid``)."""
    work = tmp_path_factory.mktemp("label-studio")
    server = start_test_server(work)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work / "data", ignore_errors=True)


@pytest.fixture
def client(label_studio: LabelStudioServer) -> Iterator[LabelStudioClient]:
    """A connected client of the session's server."""
    with connect(label_studio.url, label_studio.token) as c:
        yield c
