"""Refresh window, backoff with jitter, Retry-After, pending-approval polling interval."""

from __future__ import annotations

import random

import pytest

from sidecar.schedule import backoff_delay, poll_interval, refresh_delay, retry_delay


def test_refresh_falls_inside_the_lifetime_window() -> None:
    rng = random.Random(1)
    delays = [refresh_delay(100.0, (0.5, 0.8), rng) for _ in range(1000)]
    assert 50.0 <= min(delays) and max(delays) <= 80.0
    assert max(delays) - min(delays) > 20.0  # jittered, not one instant


def test_refresh_of_an_already_useless_token_is_immediate() -> None:
    assert refresh_delay(-3.0, (0.5, 0.8), random.Random(1)) == 0.0


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0),
                                                        (6, 15.0, 30.0), (60, 15.0, 30.0), (5000, 15.0, 30.0)])
def test_backoff_doubles_up_to_the_ceiling_with_equal_jitter(failures: int, low: float, high: float) -> None:
    rng = random.Random(failures)
    delays = [backoff_delay(failures, 1.0, 30.0, rng) for _ in range(200)]
    assert low <= min(delays) and max(delays) <= high
    assert len(set(delays)) > 100


def test_retry_after_raises_the_delay_but_not_past_the_ceiling() -> None:
    rng = random.Random(3)
    assert retry_delay(1, 1.0, 30.0, rng, retry_after=7) >= 7
    assert retry_delay(1, 1.0, 30.0, rng, retry_after=3600) <= 30.0
    assert retry_delay(1, 1.0, 30.0, rng, retry_after=None) <= 1.0


def test_poll_interval_follows_the_broker_else_rfc8628_default() -> None:
    assert poll_interval(2, None, slow_down=False) == 2.0
    assert poll_interval(None, None, slow_down=False) == 5.0
    assert poll_interval("soon", 3.0, slow_down=False) == 3.0
    assert poll_interval(True, None, slow_down=False) == 5.0
    assert poll_interval(0, 4.0, slow_down=False) == 4.0


def test_slow_down_adds_five_seconds() -> None:
    assert poll_interval(None, 5.0, slow_down=True) == 10.0
    assert poll_interval(2, 5.0, slow_down=True) == 7.0
