"""The builtins a Wasm module imports from its host (`sprintf`, `time.clock`, `time.weekday`,
`time.parse_rfc3339_ns`), evaluated in-process, against the pinned OPA on the same inputs:
the same value, or an error where OPA's strict builtin errors give one."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.opa_server import OPAServer
from jitmesh.opa_wasm import OPAWasm, WasmPolicyError, bundle_parts

POLICY = """package hostb

sprintf_result := sprintf(input.format, input.args)

clock_result := time.clock(input.ns)

weekday_result := time.weekday(input.ns)

parse_result := time.parse_rfc3339_ns(input.t)
"""

DAY = 86_400 * 10**9
INT64_MAX = 2**63 - 1

SPRINTF = [
    ("%s", ["plain"]), ("%v", ["plain"]), ("%q", ['a "quoted"\n\ttab\\ é ☃ \x01']), ("%d", [42]), ("%d", [-7]),
    ("%v", [12345678901234567890123]), ("%d", [12345678901234567890123]), ("%v", [1.5]), ("%v", [0.1]),
    ("%v", [1e21]), ("%v", [1e20]), ("%v", [1234567.5]), ("%v", [0.00001]), ("%v", [123456789.125]),
    ("%d", [1.5]), ("%s", [3]), ("%f", [3.25]), ("%.2f", [2.675]), ("%.3f", [7]), ("%e", [1234.5]),
    ("%v", [[1, "a", True, None, 2.5]]), ("%s", [{"b": [1, 2], "a": {"x": "y"}}]), ("%v", [True]),
    ("%v", [None]), ("%v", [[]]), ("%v", [{}]), ("%02d:%02d", [5, 7]), ("%5s|%-5s|", ["ab", "cd"]),
    ("%x", [255]), ("%X", ["hi"]), ("%+d", [3]), ("%05d", [-42]), ("%.3d", [5]), ("100%%", []),
    ("%d %d", [1]), ("%d", [1, "extra", 2.5]), ("%s", [""]), ("%q", [["a", 1]]), ("%d", ["str"]), ("%", []),
    ("%v", [-0.0]), ("%v", [2.0]), ("%v", [1e100]), ("%s and %v", ["x", {"k": [True, {"n": None}]}]),
]

NS = [0, -1, 1, 59_999_999_999, 86_399_999_999_999, 86_400 * 10**9, -DAY, -DAY - 1,
      1_709_164_800 * 10**9, 1_709_251_199 * 10**9 + 999_999_999,  # 2024-02-29 00:00 and its last instant
      1_733_529_599 * 10**9 + 999_999_999, 1_733_529_600 * 10**9,  # Friday 23:59:59.999999999, Saturday 00:00
      INT64_MAX, -(2**63), 1.7e18, 2**63, 1.5, [0, "UTC"], [0, ""], [1_733_529_600 * 10**9, "America/New_York"],
      [1_733_529_600 * 10**9, "Asia/Kolkata"], [0, "Not/AZone"], "0", True]

TIMES = ["2024-02-29T12:00:00Z", "2023-02-29T12:00:00Z", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999999999Z",
         "2026-12-07T05:00:00.5+01:00", "2026-12-07T05:00:00.1234567891Z", "2026-12-07T05:00:00,25Z",
         "2026-12-07T05:00:00-23:59", "2026-12-07T24:00:00Z", "2026-12-07T23:59:60Z", "2026-13-01T00:00:00Z",
         "2026-12-07 05:00:00Z", "2026-12-07T5:00:00Z", "2026-12-07T05:00:00", "2026-12-07t05:00:00z",
         "1677-09-21T00:12:43.145224192Z", "1677-09-21T00:12:43.145224191Z", "2262-04-11T23:47:16.854775807Z",
         "2262-04-11T23:47:16.854775808Z", "2262-12-31T23:59:59Z", "1600-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
         "2000-02-30T00:00:00Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00+24:00", "", 5]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostb")
    (d / "hostb.rego").write_text(POLICY)
    return d


@pytest.fixture(scope="module")
def modules(policy_dir: Path, opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, OPAWasm]:
    out: dict[str, OPAWasm] = {}
    for rule in ("sprintf_result", "clock_result", "weekday_result", "parse_result"):
        bundle = tmp_path_factory.mktemp("b") / "bundle.tar.gz"
        subprocess.run([opa_bin, "build", "-t", "wasm", "-e", f"hostb/{rule}", "-o", str(bundle), str(policy_dir)],
                       check=True, capture_output=True)
        wasm, data = bundle_parts(bundle.read_bytes())
        out[rule] = OPAWasm(wasm, data, f"hostb/{rule}")
    return out


@pytest.fixture(scope="module")
def opa_url(policy_dir: Path, opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = OPAServer([policy_dir], tmp_path_factory.mktemp("opa") / "opa.log", opa_bin=opa_bin).start()
    yield server.url
    server.stop()


def opa_says(url: str, rule: str, input_doc: dict[str, Any]) -> tuple[str, Any]:
    r = httpx.post(f"{url}/v1/data/hostb/{rule}?strict-builtin-errors=true", json={"input": input_doc}, timeout=30)
    if r.status_code != 200:
        return "error", None
    body = r.json()
    return ("value", body["result"]) if "result" in body else ("undefined", None)


def wasm_says(module: OPAWasm, input_doc: dict[str, Any]) -> tuple[str, Any]:
    try:
        value = module.evaluate(input_doc)
    except WasmPolicyError:
        return "error", None
    return ("undefined", None) if value is None else ("value", value)


@pytest.mark.parametrize(("fmt", "args"), SPRINTF, ids=[f"{f}-{a!r}"[:60] for f, a in SPRINTF])
def test_sprintf_in_process_matches_opa(modules: dict[str, OPAWasm], opa_url: str, fmt: str, args: list[Any]) -> None:
    doc = {"format": fmt, "args": args}
    assert wasm_says(modules["sprintf_result"], doc) == opa_says(opa_url, "sprintf_result", doc)


@pytest.mark.parametrize("ns", NS, ids=[repr(n)[:50] for n in NS])
@pytest.mark.parametrize("rule", ["clock_result", "weekday_result"])
def test_time_clock_and_weekday_in_process_match_opa(modules: dict[str, OPAWasm], opa_url: str, rule: str,
                                                     ns: Any) -> None:
    doc = {"ns": ns}
    assert wasm_says(modules[rule], doc) == opa_says(opa_url, rule, doc)


@pytest.mark.parametrize("t", TIMES, ids=[repr(t) for t in TIMES])
def test_time_parse_rfc3339_ns_in_process_matches_opa(modules: dict[str, OPAWasm], opa_url: str, t: Any) -> None:
    doc = {"t": t}
    assert wasm_says(modules["parse_result"], doc) == opa_says(opa_url, "parse_result", doc)


def test_a_builtin_neither_in_wasm_nor_on_this_host_is_refused_at_load_naming_it(
        opa_bin: str, tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text('package needs\n\nx := sprintf("%d", [time.diff(input.a, input.b)[0]])\n')
    subprocess.run([opa_bin, "build", "-t", "wasm", "-e", "needs/x", "-o", str(tmp_path / "b.tar.gz"),
                    str(tmp_path / "p.rego")], check=True, capture_output=True)
    wasm, data = bundle_parts((tmp_path / "b.tar.gz").read_bytes())
    with pytest.raises(WasmPolicyError, match=r"builtins the Wasm target lacks: time\.diff$"):
        OPAWasm(wasm, data, "needs/x")


def test_a_failing_builtin_makes_the_evaluation_an_error_naming_it(modules: dict[str, OPAWasm]) -> None:
    with pytest.raises(WasmPolicyError, match=r"time\.parse_rfc3339_ns"):
        modules["parse_result"].evaluate({"t": "not a time"})
    assert modules["parse_result"].evaluate({"t": "1970-01-01T00:00:01Z"}) == 10**9  # and the next one is fine

