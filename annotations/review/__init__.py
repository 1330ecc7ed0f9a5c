"""Human review in Label Studio: push the faces the model is least sure of, pull corrections back.

Modules: :mod:`~annotations.review.config` (labeling config from a scheme),
:mod:`~annotations.review.client` (the SDK client with retries, errors, token handling),
:mod:`~annotations.review.project` (project and image access), :mod:`~annotations.review.convert`
(landmarks <-> result items), :mod:`~annotations.review.push`, :mod:`~annotations.review.pull`,
:mod:`~annotations.review.status` (one state per face; the several-annotations rule),
:mod:`~annotations.review.agreement` (inter-annotator disagreement), :mod:`~annotations.review.collect`
and :mod:`~annotations.review.parents` (what a pull writes), :mod:`~annotations.review.selection` (which faces),
:mod:`~annotations.review.candidates` (a round's budget: audit slice first, then the least sure),
:mod:`~annotations.review.audit` (the random audit and its estimate of the pool's quality),
:mod:`~annotations.review.corrections` (corrections beside the pseudo-labels they fixed),
:mod:`~annotations.review.export_file` (no server: an import file), :mod:`~tools.labelstudio_server`
(start a local Label Studio), :mod:`~annotations.review.cli_helpers` (CLI/flow entry points).

Importing this package is cheap; the SDK (~1 s) is imported on the first request or validation.
"""

from annotations.review.agreement import annotator_disagreement
from annotations.review.client import (
    LabelStudioClient,
    RetryPolicy,
    ReviewAuthError,
    ReviewConfigError,
    ReviewError,
    ReviewRequestError,
    ReviewUnavailable,
    configured,
    connect,
)
from annotations.review.config import labeling_config
from annotations.review.export_file import ExportReport, write_import_file
from annotations.review.pull import PullReport, pull_reviews
from annotations.review.push import PushReport, push_pending, push_reviews, record_pending
from annotations.review.selection import pose_descriptor, select_for_review
from annotations.review.status import review_states, review_status, status, task_state

__all__ = [
    "ExportReport",
    "LabelStudioClient",
    "PullReport",
    "PushReport",
    "RetryPolicy",
    "ReviewAuthError",
    "ReviewConfigError",
    "ReviewError",
    "ReviewRequestError",
    "ReviewUnavailable",
    "annotator_disagreement",
    "configured",
    "connect",
    "labeling_config",
    "pose_descriptor",
    "pull_reviews",
    "push_pending",
    "push_reviews",
    "record_pending",
    "review_states",
    "review_status",
    "select_for_review",
    "status",
    "task_state",
    "write_import_file",
]
