"""Errors of the label store; every message names the file or field at fault and the fix.

Re-exported by :mod:`annotations.store`; import them from there.
"""

from __future__ import annotations

__all__ = ["CorruptFile", "HoldoutLeak", "RoundFileMissing", "SchemaVersionError", "StoreError", "StoreLocked"]


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class SchemaVersionError(StoreError):
    """store.json was written by a pipstc with another schema version (newer, older or unknown)."""


class HoldoutLeak(StoreError):
    """A holdout sample was about to be pseudo-labelled, corrected or sent to review."""


class StoreLocked(StoreError):
    """The writer lock stayed held by another live writer until the timeout."""


class CorruptFile(StoreError):
    """A file in the store is truncated, foreign, of another schema, or not one the store wrote.

    Attributes:
        path: The file, as a path or URL a person can open.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class RoundFileMissing(StoreError, FileNotFoundError):
    """A round bookkeeping file that was asked for does not exist (also a ``FileNotFoundError``)."""
