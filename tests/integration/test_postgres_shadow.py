"""The shadow-store tests of test_shadow_store.py, run again against a real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.integration.test_shadow_store import *  # noqa: F403  (the same behaviours, pinned once)


@pytest.fixture
def store_url(postgres_url: str) -> str:
    return postgres_url


pytestmark = pytest.mark.postgres
