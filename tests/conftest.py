"""Shared test helpers.

Services (Label Studio, Prefect, Dask) are real. Locally a missing service skips its tests with the
reason; under CI (``CI=true``) a missing service fails them, never skips.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Property tests check what happens, not how fast: no per-example deadline (a shared 2-core machine
# can take seconds for an example that takes milliseconds alone; timed assertions do not belong here).
settings.register_profile("pipstc", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pipstc")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, why: str) -> None:
    """Skip locally, fail in CI: a test that needs ``what`` cannot run because ``why``."""
    msg = f"{what} is not available: {why}"
    if IN_CI:
        pytest.fail(msg + " (CI must start every service the tests need; see scripts/test.sh)")
    pytest.skip(msg)  # local runs only; CI=true turns this into a failure above
