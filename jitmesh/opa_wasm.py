"""OPA's Wasm ABI on `wasmtime`, just what the access policy and shadow mode's candidate need
(docs/contract.md §7, §6).

One instance per policy module, used from one thread only (the proxy's event loop, shadow
mode's candidate thread). The data document is parsed into the module's heap once; each
evaluation writes its input after it, calls `opa_eval` (ABI 1.2+, one call per decision)
and resets the heap to where the data ended. Builtins the module imports from its host
(`opa_builtin0..4`, by the ids of its `builtins` export) are answered from `HOST_BUILTINS`
(`jitmesh/opa_builtins.py`); a module that needs one this host does not provide is refused
when loaded, naming it: the broker refuses to build such a policy, and this is the proxy's
own guard. A builtin that fails
makes the evaluation fail (`WasmPolicyError`), never undefined.

Why our own glue: `opa-py-wasm` 1.2.1 (on wasmtime) agreed with `opa eval` on every access
policy case we tried, but took 1.4 ms per decision here (its pool, per-call epoch deadline and
wasmtime-py's per-call boxing), against 0.08-0.2 ms for this module on the same machine;
`opa-golib-python-bindings` needs Python 3.14 and this project runs on 3.11.
"""

from __future__ import annotations

import ctypes
import io
import json
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi  # the C API under wasmtime-py, for the one hot call

from jitmesh.opa_builtins import HOST_BUILTINS, Builtin, BuiltinError, NumberLiteral

MIN_ABI = (1, 2)
ANSWERS_KEPT = 4096  # host builtin answers remembered per module, by operands

Fingerprint = tuple[tuple[str, int, int], ...]


class WasmPolicyError(Exception):
    pass


class OPABuildFailed(Exception):
    pass


class OPAWasm:
    def __init__(self, module_bytes: bytes, data: Any, entrypoint: str,
                 host_builtins: Mapping[str, Builtin] = HOST_BUILTINS) -> None:
        self._engine = wasmtime.Engine()
        self._store = wasmtime.Store(self._engine)
        try:
            module = wasmtime.Module(self._engine, module_bytes)
        except wasmtime.WasmtimeError as exc:
            raise WasmPolicyError(f"not a Wasm module: {exc}"[:300]) from None
        self._memory = wasmtime.Memory(self._store, wasmtime.MemoryType(wasmtime.Limits(5, None)))
        self._aborted: list[str] = []
        self._fast: dict[str, Callable[..., int]] = {}  # exports called through _raw_i32_call
        linker = wasmtime.Linker(self._engine)
        linker.define(self._store, "env", "memory", self._memory)
        i32 = wasmtime.ValType.i32()

        def abort(addr: int) -> None:
            self._aborted.append(self._cstring(addr))
            raise WasmPolicyError(f"the policy aborted: {self._aborted[-1]}")

        self._host: dict[int, tuple[str, Builtin]] = {}
        # the host's builtins are functions of their operands alone: the same call, the same answer
        self._answers: dict[tuple[int, tuple[str, ...]], bytes] = {}

        def builtin(builtin_id: int, _ctx: int, *args: int) -> int:
            name, impl = self._host.get(builtin_id, (f"#{builtin_id}", None))
            if impl is None:
                raise WasmPolicyError(f"the policy called builtin {name}, which this host does not provide")
            operands = tuple(self._cstring(self._call("opa_json_dump", a)) for a in args)
            raw = self._answers.get((builtin_id, operands))
            if raw is None:
                try:
                    result = impl(*(json.loads(o, parse_float=NumberLiteral) for o in operands))
                    raw = json.dumps(result, separators=(",", ":")).encode()
                except (BuiltinError, ValueError, TypeError) as exc:
                    self._aborted.append(f"{name}: {exc}")
                    raise WasmPolicyError(f"builtin {name} failed: {exc}") from None
                if len(self._answers) >= ANSWERS_KEPT:
                    self._answers.clear()
                self._answers[(builtin_id, operands)] = raw
            return self._call("opa_json_parse", self._write(raw), len(raw))

        linker.define_func("env", "opa_abort", wasmtime.FuncType([i32], []), abort)
        linker.define_func("env", "opa_println", wasmtime.FuncType([i32], []), lambda addr: None)
        for n in range(5):
            linker.define_func("env", f"opa_builtin{n}", wasmtime.FuncType([i32] * (n + 2), [i32]), builtin)
        self._instance = linker.instantiate(self._store, module)
        ex = self._instance.exports(self._store)
        self._ex = ex
        abi = (self._global("opa_wasm_abi_version"), self._global("opa_wasm_abi_minor_version"))
        if abi < MIN_ABI:
            raise WasmPolicyError(f"OPA Wasm ABI {abi[0]}.{abi[1]}: at least {MIN_ABI[0]}.{MIN_ABI[1]} is needed")
        needed = self._dump_json(self._call("builtins"))
        lacking = sorted(name for name in needed if name not in host_builtins)
        if lacking:
            raise WasmPolicyError(f"the policy needs builtins the Wasm target lacks: {', '.join(lacking)}")
        self._host = {int(i): (name, host_builtins[name]) for name, i in needed.items()}
        entrypoints = self._dump_json(self._call("entrypoints"))
        if entrypoint not in entrypoints:
            raise WasmPolicyError(f"the module has no entrypoint {entrypoint!r} (it has {sorted(entrypoints)})")
        self._entrypoint = int(entrypoints[entrypoint])
        raw = json.dumps(data, separators=(",", ":")).encode()
        addr = self._write(raw)
        self._data_addr = self._call("opa_json_parse", addr, len(raw))
        if not self._data_addr:
            raise WasmPolicyError("the policy's data could not be parsed by the module")
        self._heap_base = self._call("opa_heap_ptr_get")
        evaluate = ex.get("opa_eval")
        if not isinstance(evaluate, wasmtime.Func):
            raise WasmPolicyError("the module does not export opa_eval (OPA Wasm ABI 1.2+)")
        self._eval: Callable[..., Any] = self._raw_i32_call(evaluate, 7) or (
            lambda *args: evaluate(self._store, *args))

    def _raw_i32_call(self, func: wasmtime.Func, nparams: int) -> Callable[..., int] | None:
        """`func(*i32s) -> i32` straight through wasmtime's C API.

        wasmtime-py's `Func.__call__` re-reads the function's type and boxes every argument on
        each call, which costs more than the policy's evaluation itself (measured: about
        0.5 ms of 0.6 ms per decision); this skips that for a signature known to be i32s.
        None (use `Func.__call__`) if this wasmtime-py does not have the parts it relies on."""
        try:
            context = self._store._context
            raw_func = func._func
            call, kind = ffi.wasmtime_func_call, ffi.WASMTIME_I32.value
            val_t, trap_t = ffi.wasmtime_val_t, ffi.wasm_trap_t
        except AttributeError:
            return None
        params_t = val_t * nparams
        results_t = val_t * 1

        def invoke(*args: int) -> int:
            params, results = params_t(), results_t()
            for i, a in enumerate(args):
                params[i].kind = kind  # type: ignore[assignment]
                params[i].of.i32 = a
            trap = ctypes.POINTER(trap_t)()
            error = call(context(), ctypes.byref(raw_func), params, nparams, results, 1, ctypes.byref(trap))
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
            if trap:
                raise wasmtime.Trap._from_ptr(trap)
            return int(results[0].of.i32)

        return invoke

    def _global(self, name: str) -> int:
        g = self._ex.get(name)
        if not isinstance(g, wasmtime.Global):
            return 0
        return int(g.value(self._store))

    def _call(self, name: str, *args: int) -> int:
        fast = self._fast.get(name)
        if fast is not None:
            return fast(*args)
        f = self._ex.get(name)
        if not isinstance(f, wasmtime.Func):
            raise WasmPolicyError(f"the module does not export {name}")
        ty = f.type(self._store)
        i32 = wasmtime.ValType.i32()
        if all(p == i32 for p in ty.params) and list(ty.results) == [i32]:  # a builtin's calls back: the hot ones
            raw = self._raw_i32_call(f, len(ty.params))
            if raw is not None:
                self._fast[name] = raw
                return raw(*args)
        out = f(self._store, *args)
        return int(out) if out is not None else 0

    def _write(self, raw: bytes) -> int:
        addr = self._call("opa_malloc", len(raw))
        self._memory.write(self._store, raw, addr)
        return addr

    def _cstring(self, addr: int) -> str:
        size = self._memory.data_len(self._store)
        heap = memoryview(self._memory.get_buffer_ptr(self._store, size)).cast("B")  # no copy of the heap
        out = bytearray()
        chunk = 4096
        while addr < size:
            piece = heap[addr:min(size, addr + chunk)].tobytes()
            end = piece.find(b"\0")
            if end >= 0:
                out += piece[:end]
                break
            out += piece
            addr += chunk
        return out.decode("utf-8", errors="replace")

    def _dump_json(self, value_addr: int) -> Any:
        return json.loads(self._cstring(self._call("opa_json_dump", value_addr)))

    def evaluate(self, input_doc: Any) -> Any:
        """The entrypoint's value for this input, or None when it is undefined."""
        raw = json.dumps(input_doc, separators=(",", ":")).encode()
        # one call into the module per decision: the input goes where the data's heap ends,
        # and opa_eval allocates after it; nothing survives the call, so nothing is freed
        end = self._heap_base + len(raw)
        heap = (end + 7) & ~7
        missing = heap + 65536 - self._memory.data_len(self._store)
        if missing > 0:
            self._memory.grow(self._store, (missing + 65535) // 65536)
        self._memory.write(self._store, raw, self._heap_base)
        self._aborted.clear()
        try:
            result_addr = self._eval(0, self._entrypoint, self._data_addr, self._heap_base, len(raw),
                                     heap, 0)
            results = json.loads(self._cstring(int(result_addr)))
        except wasmtime.WasmtimeError as exc:
            if self._aborted:  # a builtin's or opa_abort's own words, not wasmtime's backtrace
                raise WasmPolicyError(f"the policy failed: {self._aborted[-1]}"[:300]) from None
            raise WasmPolicyError(f"the policy trapped: {exc}"[:300]) from None
        except ValueError:
            raise WasmPolicyError("the policy's result is not JSON") from None
        if not results:
            return None
        return results[0].get("result")


def bundle_parts(bundle: bytes) -> tuple[bytes, Any]:
    """(policy.wasm, data) of an OPA bundle; ValueError when it is not one."""
    wasm, data = None, {}
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.lstrip("/")
                f = tar.extractfile(member) if member.isfile() else None
                if f is None:
                    continue
                if name == "policy.wasm":
                    wasm = f.read()
                elif name == "data.json":
                    data = json.loads(f.read() or b"{}")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"not an OPA bundle: {exc}") from None
    if wasm is None:
        raise ValueError("the bundle holds no policy.wasm")
    return wasm, data


def build_wasm_bundle(opa_bin: str, policy_dir: Path, entrypoint: str, timeout: float = 60.0) -> bytes:
    """`opa build -t wasm -e entrypoint` of `policy_dir` (tests left out), checked the way a host
    loads it: OPABuildFailed when OPA cannot build it, WasmPolicyError when this host cannot
    run it (a builtin it does not provide, no such entrypoint)."""
    with tempfile.TemporaryDirectory(prefix="jitmesh-wasm-") as tmp:
        out = Path(tmp) / "bundle.tar.gz"
        try:
            done = subprocess.run([opa_bin, "build", "-t", "wasm", "-e", entrypoint, "--ignore", "*_test.rego",
                                   "--ignore", ".*",  # a ConfigMap volume's ..data/ and ..<timestamp>/ copies
                                   "-o", str(out), str(policy_dir)], capture_output=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OPABuildFailed(f"opa build could not run: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip()  # opa prints errors to stdout
            raise OPABuildFailed(f"opa build failed: {said[:600]}")
        bundle = out.read_bytes()
    try:
        wasm, data = bundle_parts(bundle)
    except ValueError as exc:
        raise WasmPolicyError(str(exc)) from None
    OPAWasm(wasm, data, entrypoint)
    return bundle


def policy_fingerprint(policy_dir: Path) -> Fingerprint:
    """Names, modification times and sizes of the policy files under `policy_dir`: what a
    rebuild is decided on."""
    files = sorted(p for p in policy_dir.rglob("*") if p.is_file() and p.suffix in (".rego", ".json", ".yaml"))
    seen = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue  # removed while listed: the next look sees the directory as it is
        seen.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(seen)
