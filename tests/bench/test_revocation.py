"""Reading inotify events, and the propagation figures of one revocation."""

import struct

from bench.revocation import IN_DELETE, IN_MOVED_FROM, parse_inotify, propagation_result


def _event(wd: int, mask: int, name: str) -> bytes:
    raw = name.encode() + b"\0"
    raw += b"\0" * (-len(raw) % 16)  # the kernel pads names
    return struct.pack("iIII", wd, mask, 0, len(raw)) + raw


def test_each_event_in_a_read_buffer_is_returned_with_its_name():
    buf = _event(1, IN_DELETE, "orders-api") + _event(7, IN_MOVED_FROM, ".orders-api.tmp")
    assert parse_inotify(buf) == [(1, IN_DELETE, "orders-api"), (7, IN_MOVED_FROM, ".orders-api.tmp")]


def test_a_truncated_event_is_left_out():
    assert parse_inotify(_event(1, IN_DELETE, "a")[:10]) == []


def _figures(result):
    return {f.name: f for f in result.figures}


def test_propagation_is_timed_from_the_admin_call():
    seen = {i: 100.0 + (i + 1) / 1000 for i in range(100)}  # 1..100 ms after t0=100
    figs = _figures(propagation_result(seen, t0=100.0, n=100, call_ms=3.0))
    assert round(figs["p50 propagation"].value, 3) == 50.0
    assert round(figs["p99 propagation"].value, 3) == 99.0
    assert round(figs["max propagation"].value, 3) == 100.0
    assert figs["p99 propagation"].verdict() == "ok"


def test_missing_sidecars_leave_no_p99_and_are_counted():
    seen = {0: 100.2, 1: 100.3}
    figs = _figures(propagation_result(seen, t0=100.0, n=4, call_ms=3.0))
    assert figs["sidecars whose file went"].value == 2
    assert figs["p99 propagation"].value is None
