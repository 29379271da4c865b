"""How many sidecars one broker serves, derived from its issuance rate."""

import pytest

from bench.sidecar_section import Capacity


def test_each_audience_is_refreshed_once_per_mean_refresh_interval():
    cap = Capacity(issuance_rate=1000.0, ttl_s=300.0, window=(0.5, 0.8), audiences=3)
    assert cap.refresh_interval_s == pytest.approx(195.0)
    assert cap.per_sidecar_rate == pytest.approx(3 / 195)
    assert cap.sidecars == pytest.approx(65_000)


def test_more_audiences_means_fewer_sidecars():
    one = Capacity(1000.0, 300.0, (0.5, 0.8), 1).sidecars
    assert Capacity(1000.0, 300.0, (0.5, 0.8), 3).sidecars == pytest.approx(one / 3)
