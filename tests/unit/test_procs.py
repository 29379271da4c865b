"""Ports for the processes the tests, `jitmesh up` and the benchmarks start."""

from __future__ import annotations

import socket

from jitmesh.procs import free_port


def test_free_ports_are_outside_the_ephemeral_range_and_bindable() -> None:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
