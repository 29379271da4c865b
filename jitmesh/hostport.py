"""`HOST:PORT` listen addresses, as the broker, the injector and the sidecar all take them."""

from __future__ import annotations


def split_host_port(raw: str) -> tuple[str, int] | None:
    """`127.0.0.1:8080` -> ("127.0.0.1", 8080); `[::1]:8080` -> ("::1", 8080); None when
    it is not HOST:PORT with a port from 1 to 65535 (callers name their flag in the error)."""
    host, sep, port = raw.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)
