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


def without_userinfo(url: str) -> str:
    """`url` as it may be shown in an error or a log: any `user:password@` in its authority
    replaced by `***@`, so a refusal never repeats a credential."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{rest[end:]}"
