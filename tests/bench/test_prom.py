"""Reading the broker's latency histograms from Prometheus text."""

from bench.prom import mean_ms, parse_sums

BEFORE = """# HELP jitmesh_token_request_seconds Whole /token request latency
# TYPE jitmesh_token_request_seconds histogram
jitmesh_token_request_seconds_bucket{le="0.001"} 0.0
jitmesh_token_request_seconds_count 10.0
jitmesh_token_request_seconds_sum 0.05
jitmesh_token_denials_total{reason="access_denied"} 2.0
"""
AFTER = """jitmesh_token_request_seconds_count 110.0
jitmesh_token_request_seconds_sum 1.05
"""


def test_only_unlabelled_sums_and_counts_are_read():
    assert parse_sums(BEFORE) == {"jitmesh_token_request_seconds_count": 10.0,
                                  "jitmesh_token_request_seconds_sum": 0.05}


def test_mean_covers_only_what_happened_between_scrapes():
    assert mean_ms(parse_sums(BEFORE), parse_sums(AFTER), "jitmesh_token_request_seconds") == 10.0


def test_no_new_observations_means_no_mean():
    assert mean_ms(parse_sums(AFTER), parse_sums(AFTER), "jitmesh_token_request_seconds") is None


def test_a_histogram_the_broker_lacks_has_no_mean():
    assert mean_ms({}, parse_sums(AFTER), "jitmesh_opa_request_seconds") is None
