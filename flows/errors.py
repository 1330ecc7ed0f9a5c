"""Errors a user can fix, and how the command line tells them: one line, ``<where>: <what> — <fix>``.

:class:`UserError` is what pipstc's own checks raise (a round's preconditions, a config file, a
folder with no face). :func:`explain` turns any exception into the lines the CLI prints and its exit
status: the errors of the packages below (a malformed file, a store problem,
Label Studio unreachable) keep their message, which already names the file and the fix; anything
else is a bug, reported as such with the hint to rerun with ``--debug`` for the traceback.

Exit statuses: 0 done; 1 nothing usable came out (every row rejected, no face found) or an unexpected
error; 2 the command could not run as given (usage, an unreadable or wrong input file, a store,
config or service problem: the message says what to fix); 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigFileError",
    "MissingExtra",
    "NothingFound",
    "PreflightError",
    "UserError",
    "explain",
    "missing_extra",
]

EXIT_OK = 0
EXIT_FAILED = 1  # ran, but nothing usable came out (or an unexpected error)
EXIT_USAGE = 2  # could not run as given; argparse uses 2 for usage errors too

# Errors of the layers below whose messages already name the file/field and the fix. Matched by
# module and name, so that explaining an error never imports torch or an SDK just to compare classes.
_KNOWN = (
    ("annotations.formats.common", "FormatError"),
    ("annotations.store.errors", "StoreError"),
    ("annotations.store.schema", "SchemaMismatch"),
    ("annotations.ingest.detect", "DetectorUnavailable"),
    ("annotations.review.client", "ReviewError"),
    ("pipnet_core.images", "ImageReadError"),
    ("pipnet_core.schemes", "SchemeError"),
    ("pipnet_core.train", "CheckpointError"),
    ("pipnet_core.backbone", "WeightsError"),
    ("flows.config", "ConfigConflict"),
)


class UserError(Exception):
    """A problem the user can fix. The message is ``<where>: <what> — <fix>``.

    Attributes:
        where: The file, folder, store or option at fault.
        what: What is wrong with it.
        fix: What to do about it.
        exit_code: The CLI's exit status for it (:data:`EXIT_USAGE` unless a subclass says otherwise).
    """

    exit_code = EXIT_USAGE

    def __init__(self, where: str, what: str, fix: str) -> None:
        self.where, self.what, self.fix = str(where), what, fix
        super().__init__(f"{self.where}: {what} — {fix}")


class ConfigFileError(UserError):
    """A config file (``--config``) or config value that cannot be used."""


class NothingFound(UserError):
    """The input was readable but held nothing to work on (no face in any image)."""

    exit_code = EXIT_FAILED


class MissingExtra(UserError, ImportError):
    """An optional feature was used without the extra that installs its dependency."""


class PreflightError(UserError):
    """A round cannot start: every unmet precondition, each one line.

    Attributes:
        problems: The unmet preconditions (the first is also this error's own message).
    """

    def __init__(self, problems: Sequence[UserError]) -> None:
        assert problems, "a preflight error needs at least one problem"
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.where, first.what, first.fix)


def missing_extra(feature: str, package: str, extra: str) -> MissingExtra:
    """The error for ``feature`` used without ``package``, naming the extra that installs it."""
    return MissingExtra(
        feature, f"needs the Python package {package!r}, which is not installed", f"pip install 'pipstc[{extra}]'"
    )


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _is_known(exc: BaseException) -> bool:
    for module, name in _KNOWN:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def explain(exc: BaseException) -> tuple[list[str], int]:
    """The lines (without the ``error:`` prefix) and the exit status the CLI reports for ``exc``."""
    if isinstance(exc, PreflightError):
        return [_one_line(str(p)) for p in exc.problems], exc.exit_code
    if isinstance(exc, UserError):
        return [_one_line(str(exc))], exc.exit_code
    if _is_known(exc):
        return [_one_line(str(exc))], EXIT_USAGE
    if isinstance(exc, OSError) and exc.filename is not None:
        return [f"{exc.filename}: {exc.strerror or exc} — check the path and its permissions"], EXIT_USAGE
    what = _one_line(str(exc)) or "(no message)"
    return [
        f"unexpected {type(exc).__name__}: {what} — this is a bug in pipstc: rerun with --debug for the traceback "
        "and report it"
    ], EXIT_FAILED
