"""A named network namespace for the test node, entered by one thread at a time (setns), and
a loopback forwarder from this machine's 127.0.0.1 to a port inside it.

Everything the node does to the network (its dummy link, bridge, iptables chains, sysctls)
stays in the namespace and goes with it: `ip netns del` is the whole network teardown.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetNS:
    """`ip netns add NAME`; `run` executes argv inside it (nsenter --net only: the mount
    namespace, hence /sys/fs/cgroup, stays the machine's, unlike `ip netns exec`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        self._executor: ThreadPoolExecutor | None = None

    def create(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net={self.path}", "--"]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"in netns {self.name}: {' '.join(argv)} exited {out.returncode}: "
                               f"{out.stderr.strip() or out.stdout.strip()}")
        return out

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on a thread that lives in the namespace (its sockets are the namespace's)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"netns-{self.name}",
                                                initializer=_setns, initargs=(self.path,))
        return self._executor.submit(fn).result()

    def delete(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.exists():
            subprocess.run(["ip", "netns", "del", self.name], check=True, capture_output=True, text=True)


class Forwarder:
    """127.0.0.1:<port> on this machine -> 127.0.0.1:<target_port> inside the namespace, so
    the test process, helm and kubectl reach the API server as a user's laptop would."""

    def __init__(self, netns: NetNS, target_port: int) -> None:
        self.netns = netns
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="netns-forwarder", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _setns(self.netns.path)
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            upstream.settimeout(None)
        except OSError:
            conn.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
        back.start()
        _pump(conn, upstream)
        back.join(timeout=30)
        conn.close()
        upstream.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
