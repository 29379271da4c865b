import pytest

from jitmesh.hostport import split_host_port


@pytest.mark.parametrize(("raw", "expected"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:8443", ("::1", 8443)),
    (" 0.0.0.0:1 ", ("0.0.0.0", 1)),
    ("localhost:65535", ("localhost", 65535)),
])
def test_host_and_port_are_split(raw: str, expected: tuple[str, int]) -> None:
    assert split_host_port(raw) == expected


@pytest.mark.parametrize("raw", ["8080", ":8080", "host:", "host:0", "host:65536", "host:http", "host:-1", ""])
def test_anything_but_host_colon_port_is_refused(raw: str) -> None:
    assert split_host_port(raw) is None
