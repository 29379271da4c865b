"""Percentiles of the samples the benchmarks collect themselves."""

import pytest

from bench.stats import cpu_share, percentile, summarize


def test_p99_of_a_hundred_samples_is_the_99th_smallest():
    samples = list(range(1, 101))
    assert percentile(samples, 99) == 99
    assert percentile(samples, 50) == 50


def test_percentile_is_always_a_sample_never_an_interpolation():
    assert percentile([10.0, 20.0], 50) == 10.0
    assert percentile([10.0, 20.0], 51) == 20.0


def test_percentile_ignores_input_order():
    assert percentile([5, 1, 4, 2, 3], 100) == 5
    assert percentile([5, 1, 4, 2, 3], 0) == 1


def test_one_sample_is_every_percentile():
    assert percentile([7.5], 1) == percentile([7.5], 99) == 7.5


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_percentile_outside_0_to_100_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        percentile([1], 101)


def test_summary_has_count_median_tail_max_and_mean():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.count, s.p50, s.p99, s.max, s.mean) == (4, 2.0, 4.0, 4.0, 2.5)


def test_cpu_share_is_a_fraction_of_one_core():
    assert cpu_share(3.0, 2.0) == 1.5
