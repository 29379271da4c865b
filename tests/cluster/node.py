"""A real single-node Kubernetes for one test session, inside a network namespace of its own.

containerd (Debian's, `restrict_oom_score_adj = true`: this kind of sandbox lacks
CAP_SYS_RESOURCE), etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
kube-proxy (iptables) and CoreDNS, all built by `scripts/tools.sh`; bridge CNI; images from
`make image` imported with `ctr`; PersistentVolumes on hostPath under the run directory.

Everything network-related lives in the namespace `jm-<run id>`: the node address on a portless
bridge, i.e. a dummy link (192.0.2.10, the documentation range, never the machine's own), the pod bridge, kube-proxy's
iptables chains, CoreDNS. The test process reaches the API server through a loopback forwarder.
Per run: its directory `/tmp/jm-cluster-<id>`, its cgroup parent `/jm-<id>`, its containerd
socket; so a second run at the same time collides with nothing. `stop()` ends every process by
its PID, unmounts what the node mounted, removes the cgroups and the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from injector.certs import issue, make_ca
from jitmesh.procs import ManagedProcess
from tests.cluster.netns import Forwarder, NetNS

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "scripts" / "tools.sh"
NODE_NAME = "jm-node"
NODE_IP = "192.0.2.10"            # on the dummy link inside the namespace
NODE_LINK = "jm-node0"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
BRIDGE = "jm-br0"
API_PORT = 6443
ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
CNI_BIN = Path("/usr/lib/cni")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
PV_COUNT = 4
# Host-wide sysctls the kubelet sets when it starts (protectKernelDefaults off); put back after.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "nsenter", "iptables")
KUBE_TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
              "kubectl", "coredns", "helm")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the node; the message names what is missing."""


def tool_path(name: str) -> Path:
    out = subprocess.run([str(TOOLS), "path", name], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run a node, each with how to get it; empty when all is there."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (containerd, the kubelet and network namespaces need uid 0; run `make test` as root)")
    if not (Path("/sys/fs/cgroup/memory").is_dir() or Path("/sys/fs/cgroup/cgroup.controllers").is_file()):
        missing.append("cgroups (neither a v1 memory hierarchy nor cgroup v2 is mounted at /sys/fs/cgroup)")
    if not Path("/proc/self/ns/net").exists():
        missing.append("network namespaces (/proc/self/ns/net)")
    for cmd in COMMANDS:
        if shutil.which(cmd) is None:
            missing.append(f"{cmd} (`scripts/tools.sh node-packages` installs it)")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_BIN / plugin).exists():
            missing.append(f"CNI plugin {CNI_BIN / plugin} (`scripts/tools.sh node-packages`)")
    for name in KUBE_TOOLS:
        path = tool_path(name)
        if not os.access(path, os.X_OK):
            missing.append(f"{path} (`make cluster-tools` builds it)")
    return missing


def image_archives() -> dict[str, Path]:
    """REF -> OCI archive, from `image/build.sh list` (cached by content: built once)."""
    out = subprocess.run([str(REPO / "image" / "build.sh"), "list"], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})
    if out.returncode != 0:
        raise ClusterUnavailable(f"`image/build.sh list` failed ({out.returncode}); `make image` builds the "
                                 f"images:\n{out.stderr[-3000:]}")
    refs: dict[str, Path] = {}
    for line in out.stdout.splitlines():
        ref, _, archive = line.partition("\t")
        refs[ref] = Path(archive)
    return refs


@dataclass
class Stage:
    name: str
    seconds: float


@dataclass
class Node:
    """One run of the node; `start()` then `stop()` (which undoes whatever start got to)."""

    progress: Callable[[str], None]
    run_id: str = field(default_factory=lambda: secrets.token_hex(4))
    stages: list[Stage] = field(default_factory=list)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    kubelet_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    forwarder: Forwarder | None = None
    _t0: float = field(default_factory=time.monotonic)
    _sysctls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dir = Path(f"/tmp/jm-cluster-{self.run_id}")
        self.logs = self.dir / "logs"
        self.netns = NetNS(f"jm-{self.run_id}")
        self.cgroup_root = f"/jm-{self.run_id}"
        self.sock = self.dir / "containerd" / "containerd.sock"
        self.pki = self.dir / "pki"

    # --- public -----------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.forwarder is not None
        return f"https://127.0.0.1:{self.forwarder.port}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig for this machine's side (helm, kubectl, the tests)."""
        return self.dir / "admin.kubeconfig"

    def api_client(self) -> client.ApiClient:
        cfg = client.Configuration()
        cfg.host = self.api_url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": self.admin_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.progress(f"node {self.run_id}: starting in {self.dir}, network namespace {self.netns.name}")
        _prune_finished_runs(keep=3)
        for run_id in abandoned_runs():
            self.progress(f"node {run_id}: its test process died before its teardown; tearing it down now")
            Node(progress=self.progress, run_id=run_id).stop()
        self.dir.mkdir(mode=0o700)
        self.logs.mkdir()
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        self._stage("network namespace, node address and sysctls", self._network)
        self._stage("PKI and kubeconfigs", self._write_pki)
        self._stage("containerd started", self._containerd)
        # the images unpack while the control plane starts
        importing = ThreadPoolExecutor(1, thread_name_prefix="ctr-import").submit(self._import_images)
        self._stage("etcd and kube-apiserver ready", self._control_plane)
        self._stage("kube-controller-manager and kube-scheduler", self._controllers)
        self._stage("images imported", importing.result)
        self._stage("kubelet: node Ready", self._kubelet)
        self._stage("kube-proxy, CoreDNS, storage", self._services)
        self.progress(f"node {self.run_id}: ready after {self.elapsed():.1f}s")

    def stop(self) -> list[str]:
        """Undo start; returns what could not be cleaned (empty when the machine is as before)."""
        t0 = time.monotonic()
        problems: list[str] = []
        timings: list[str] = []

        def step(name: str, fn: Callable[[], list[str] | None]) -> None:
            t = time.monotonic()
            try:
                problems.extend(fn() or [])
            except Exception as exc:  # one step failing must not keep the others from cleaning up
                problems.append(f"{name}: {type(exc).__name__}: {exc}")
            timings.append(f"{name} {time.monotonic() - t:.1f}s")

        for name in ("coredns", "kube-proxy", "kube-scheduler", "kube-controller-manager", "kubelet"):
            step(name, lambda name=name: self._stop_process(name))
        if "containerd" in self.processes:
            step("containers", self._remove_containers)
            step("containerd", lambda: self._stop_process("containerd"))
        step("leftover processes", self._kill_leftovers)
        for name in ("kube-apiserver", "etcd"):  # their state is thrown away: no graceful shutdown to wait for
            step(name, lambda name=name: self._kill_process(name))
        if self.forwarder is not None:
            self.forwarder.close()
        step("mounts", self._unmount_all)
        step("cgroups", self._remove_cgroups)
        step("network namespace", self._delete_netns)
        self._remove_container_log_links()
        self._restore_sysctls()
        step("files", self._remove_files)
        self.progress(f"node {self.run_id}: torn down in {time.monotonic() - t0:.1f}s ({', '.join(timings)})"
                      + (f" with problems: {problems}" if problems else "") + f"; logs kept in {self.logs}")
        return problems

    def _delete_netns(self) -> list[str]:
        try:
            self.netns.delete()
        except subprocess.CalledProcessError as exc:
            return [f"ip netns del {self.netns.name}: {exc.stderr}"]
        return []

    def _remove_files(self) -> None:
        for child in self.dir.iterdir() if self.dir.exists() else []:
            if child == self.logs:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink()

    def diagnostics(self, lines: int = 40) -> str:
        """The tail of every node process's log, for a failure message."""
        return "\n".join(f"--- {name} ({p.log_path}) ---\n" + "\n".join(p.output().splitlines()[-lines:])
                         for name, p in self.processes.items())

    # --- stages -----------------------------------------------------------------------------

    def _stage(self, name: str, fn: Callable[[], None]) -> None:
        t = time.monotonic()
        try:
            fn()
        except Exception as exc:
            raise RuntimeError(f"node start-up failed at {name!r}: {exc}\n{self.diagnostics()}") from exc
        self.stages.append(Stage(name, time.monotonic() - t))
        self.progress(f"  [{self.elapsed():6.1f}s] {name} ({time.monotonic() - t:.1f}s)")

    def _network(self) -> None:
        self.netns.create()
        ns = self.netns
        ns.run("ip", "link", "set", "lo", "up")
        # a bridge without ports is a dummy link: this kind of kernel has no `dummy` module
        ns.run("ip", "link", "add", NODE_LINK, "type", "bridge")
        ns.run("ip", "addr", "add", f"{NODE_IP}/32", "dev", NODE_LINK)
        ns.run("ip", "link", "set", NODE_LINK, "up")
        # the kubelet wants a default route to pick its address; it points at the dummy link only
        ns.run("ip", "route", "add", "default", "dev", NODE_LINK)
        # these are the namespace's own copies, not the machine's
        ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns.run("sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1", check=False)
        for key in KUBELET_SYSCTLS:
            with contextlib.suppress(OSError):
                self._sysctls[key] = Path("/proc/sys", key).read_text().strip()

    def _write_pki(self) -> None:
        self.pki.mkdir()
        ca = make_ca(f"jitmesh-test-cluster-{self.run_id}")
        serving = issue(ca, "kube-apiserver", ["localhost", "kubernetes", "kubernetes.default",
                                               "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"],
                        ["127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP])
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.pki / "ca.crt").write_bytes(ca.cert_pem())
        (self.pki / "ca.key").write_bytes(ca.key_pem())
        (self.pki / "apiserver.crt").write_bytes(serving.cert_pem())
        (self.pki / "apiserver.key").write_bytes(serving.key_pem())
        (self.pki / "sa.key").write_bytes(sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
        (self.pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (self.pki / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f'{self.kubelet_token},system:node:{NODE_NAME},kubelet,"system:nodes"\n')
        for f in self.pki.iterdir():
            f.chmod(0o600)
        # inside the namespace the API server is at 127.0.0.1:6443; outside, at the forwarder
        self._write_kubeconfig(self.dir / "admin-in-ns.kubeconfig", f"https://127.0.0.1:{API_PORT}",
                               self.admin_token)
        self._write_kubeconfig(self.dir / "kubelet.kubeconfig", f"https://127.0.0.1:{API_PORT}",
                               self.kubelet_token)

    def _write_kubeconfig(self, path: Path, server: str, token: str) -> None:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "jm",
            "clusters": [{"name": "jm", "cluster": {"server": server, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "jm", "user": {"token": token}}],
            "contexts": [{"name": "jm", "context": {"cluster": "jm", "user": "jm", "namespace": "default"}}],
        }))
        path.chmod(0o600)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        proc = ManagedProcess(name, [*self.netns.prefix(), *argv], self.logs / f"{name}.log", env=env).start()
        self.processes[name] = proc
        return proc

    def _control_plane(self) -> None:
        self._spawn("etcd", [
            str(tool_path("etcd")), "--name", NODE_NAME, "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
            "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER_PORT}",
            "--initial-cluster", f"{NODE_NAME}=http://127.0.0.1:{ETCD_PEER_PORT}",
            "--listen-metrics-urls", "", "--unsafe-no-fsync", "--log-level", "warn"])
        p = self.pki
        self._spawn("kube-apiserver", [
            str(tool_path("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}", f"--secure-port={API_PORT}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}", f"--token-auth-file={p / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP",  # the node name resolves nowhere
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false", "--v=1"])
        self.forwarder = Forwarder(self.netns, API_PORT).start()
        self._write_kubeconfig(self.kubeconfig, self.api_url, self.admin_token)
        self._wait_http("kube-apiserver /readyz", f"{self.api_url}/readyz", 180, "kube-apiserver")

    def _controllers(self) -> None:
        kc = str(self.dir / "admin-in-ns.kubeconfig")
        self._spawn("kube-controller-manager", [
            str(tool_path("kube-controller-manager")), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
            f"--service-account-private-key-file={self.pki / 'sa.key'}", f"--root-ca-file={self.ca_file}",
            "--use-service-account-credentials", "--controllers=*,-nodeipam",
            "--leader-elect=false", f"--service-cluster-ip-range={SERVICE_CIDR}", "--v=1"])
        self._spawn("kube-scheduler", [
            str(tool_path("kube-scheduler")), f"--kubeconfig={kc}", "--bind-address=127.0.0.1",
            "--leader-elect=false", "--v=1"])

    def _containerd(self) -> None:
        root = self.dir / "containerd"
        root.mkdir()
        # images unpack into memory: no disk writes to wait for, and teardown is one unmount
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6g,mode=0700", f"jm-{self.run_id}", str(root)],
                       check=True, capture_output=True, text=True)
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True)
        (self.dir / "containerd-config.toml").write_text(f"""version = 2
root = "{root / 'root'}"
state = "{root / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "jitmesh.local/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{cni / 'net.d'}"
""")
        (cni / "net.d" / "10-jm-bridge.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "jm-pods",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(cni / "ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "loopback"},
            ]}))
        self._spawn("containerd", ["containerd", "--config", str(self.dir / "containerd-config.toml")])
        self._wait(lambda: self._ctr("version", check=False).returncode == 0, 60, "containerd answers", "containerd")

    def _import_images(self) -> None:
        for ref, archive in image_archives().items():
            if not ref.startswith("jitmesh.local/coredns"):
                self._ctr("images", "import", str(archive))
        present = self._ctr("images", "ls", "-q").stdout.split()
        self.progress(f"    images: {', '.join(sorted(present))}")

    def _ctr(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(["ctr", "-a", str(self.sock), "-n", "k8s.io", *argv], capture_output=True, text=True,
                             timeout=300)
        if check and out.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(argv)}: {out.stderr.strip()}")
        return out

    def _kubelet(self) -> None:
        self._make_cgroup_root()
        (self.dir / "resolv.conf").write_text("")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "cgroupDriver": "cgroupfs", "cgroupRoot": self.cgroup_root, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "clusterDNS": [NODE_IP], "clusterDomain": "cluster.local",
            "resolvConf": str(self.dir / "resolv.conf"),
            "podLogsDir": str(self.dir / "pod-logs"),
            "failSwapOn": False, "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False, "maxPods": 60,
        }
        (self.dir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            str(tool_path("kubelet")), f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}", f"--root-dir={self.dir / 'kubelet'}",
            f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}", "--v=1"])
        core = client.CoreV1Api(self.api_client())

        def ready() -> bool:
            try:
                node = core.read_node(NODE_NAME)
            except client.ApiException:
                return False
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        self._wait(ready, 180, f"node {NODE_NAME} Ready", "kubelet")

    def _services(self) -> None:
        kc = str(self.dir / "admin-in-ns.kubeconfig")
        (self.dir / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kc}, "mode": "iptables", "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME, "bindAddress": NODE_IP,
            "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": "127.0.0.1:10256",
            # 0: leave the machine-wide conntrack settings as they are
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }))
        self._spawn("kube-proxy", [str(tool_path("kube-proxy")), f"--config={self.dir / 'kube-proxy.yaml'}", "--v=1"])
        # cluster names only; no forwarding, so nothing leaves for another resolver
        (self.dir / "Corefile").write_text(f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kc}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        self._spawn("coredns", [str(tool_path("coredns")), "-conf", str(self.dir / "Corefile")])
        self._storage()
        self._wait(lambda: self.netns.call(lambda: _http_ok("http://127.0.0.1:8181/ready")), 120,
                   "CoreDNS ready", "coredns")
        self._wait(lambda: self.netns.call(lambda: _http_ok("http://127.0.0.1:10256/healthz")), 120,
                   "kube-proxy healthy", "kube-proxy")
        core = client.CoreV1Api(self.api_client())

        def default_sa() -> bool:
            try:
                core.read_namespaced_service_account("default", "default")
                return True
            except client.ApiException:
                return False

        self._wait(default_sa, 120, "the default ServiceAccount (controller-manager working)",
                   "kube-controller-manager")

    def _storage(self) -> None:
        api = self.api_client()
        client.StorageV1Api(api).create_storage_class(client.V1StorageClass(
            metadata=client.V1ObjectMeta(name="jm-hostpath", annotations={
                "storageclass.kubernetes.io/is-default-class": "true"}),
            provisioner="kubernetes.io/no-provisioner", volume_binding_mode="Immediate",
            reclaim_policy="Retain"))
        core = client.CoreV1Api(api)
        for i in range(PV_COUNT):
            path = self.dir / "volumes" / f"pv{i}"
            path.mkdir(parents=True)
            path.chmod(0o777)  # as kind's local-path provisioner: any pod user may write
            core.create_persistent_volume(client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(name=f"jm-pv{i}"),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": "2Gi"}, access_modes=["ReadWriteOnce"],
                    storage_class_name="jm-hostpath", persistent_volume_reclaim_policy="Retain",
                    host_path=client.V1HostPathVolumeSource(path=str(path), type="Directory"))))

    # --- waiting ----------------------------------------------------------------------------

    def _wait(self, check: Callable[[], bool], timeout: float, what: str, process: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.processes.get(process)
            if proc is not None and not proc.running():
                raise RuntimeError(f"{process} exited while waiting for {what}:\n{proc.output()[-4000:]}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.5)
        raise RuntimeError(f"no {what} within {timeout:.0f}s")

    def _wait_http(self, what: str, url: str, timeout: float, process: str) -> None:
        verify = ssl.create_default_context(cafile=str(self.ca_file))
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        self._wait(lambda: httpx.get(url, verify=verify, headers=headers, timeout=3).status_code == 200,
                   timeout, what, process)

    # --- teardown ---------------------------------------------------------------------------

    def _kill_process(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None:
            proc.kill()
            proc.stop()

    def _stop_process(self, name: str) -> None:
        proc = self.processes.get(name)
        if proc is not None:
            proc.stop(timeout=20)
        return None

    def _remove_containers(self) -> list[str]:
        if not self.processes["containerd"].running():
            return []
        problems: list[str] = []
        tasks = self._ctr("tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 30
        for task in tasks:
            while self._ctr("tasks", "delete", task, check=False).returncode != 0 and time.monotonic() < deadline:
                if task not in self._ctr("tasks", "ls", "-q", check=False).stdout.split():
                    break
                time.sleep(0.5)
        for container in self._ctr("containers", "ls", "-q", check=False).stdout.split():
            out = self._ctr("containers", "delete", container, check=False)
            if out.returncode != 0:
                problems.append(f"container {container}: {out.stderr.strip()}")
        return problems

    def _kill_leftovers(self) -> list[str]:
        """Processes naming this run's directory (shims, and the node's own processes when an
        earlier test process died before its teardown) and anything left in this run's cgroups."""
        pids: set[int] = set()
        # the shims name this containerd's socket; every node process names the run directory
        needle = (str(self.dir) + "/").encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if needle in (entry / "cmdline").read_bytes():
                        pids.add(int(entry.name))
        for procs in self._cgroup_dirs("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
        pids.discard(os.getpid())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)}
            time.sleep(0.2)
        return [f"process {p} outlived SIGKILL" for p in sorted(alive)]

    def _unmount_all(self) -> list[str]:
        libc = ctypes.CDLL(None, use_errno=True)
        prefix = str(self.dir) + "/"
        problems: list[str] = []
        for _ in range(5):
            points = [m for m in _mount_points() if m.startswith(prefix) or m == str(self.dir)]
            if not points:
                return problems
            for point in sorted(points, key=len, reverse=True):
                if libc.umount2(point.encode(), 0) != 0 and libc.umount2(point.encode(), 2) != 0:  # 2: MNT_DETACH
                    problems.append(f"umount {point}: {os.strerror(ctypes.get_errno())}")
        left = [m for m in _mount_points() if m.startswith(prefix)]
        return problems + [f"still mounted: {m}" for m in left]

    def _cgroup_dirs(self, leaf: str = "") -> list[Path]:
        found: list[Path] = []
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            top = hierarchy / self.cgroup_root.lstrip("/")
            if top.is_dir():
                found += [Path(d) / leaf if leaf else Path(d) for d, _, _ in os.walk(top)]
        return found

    def _make_cgroup_root(self) -> None:
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            if not (hierarchy / "cgroup.procs").exists():
                continue
            top = hierarchy / self.cgroup_root.lstrip("/")
            top.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset children start empty
                if (top / knob).exists() and not (top / knob).read_text().strip():
                    (top / knob).write_text((hierarchy / knob).read_text())

    def _remove_cgroups(self) -> list[str]:
        problems: list[str] = []
        for d in sorted(self._cgroup_dirs(), key=lambda p: len(p.parts), reverse=True):
            for _ in range(20):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    last = exc
                    time.sleep(0.25)
            else:
                problems.append(f"cgroup {d}: {last}")
        return problems

    def _remove_container_log_links(self) -> None:
        logs = Path("/var/log/containers")
        for link in logs.iterdir() if logs.is_dir() else []:
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(self.dir)):
                    link.unlink()

    def _restore_sysctls(self) -> None:
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                if Path("/proc/sys", key).read_text().strip() != value:
                    Path("/proc/sys", key).write_text(value)


def abandoned_runs() -> list[str]:
    """Runs whose test process is gone but whose node is not torn down (it was SIGKILLed)."""
    found = []
    for d in Path("/tmp").glob("jm-cluster-*"):
        with contextlib.suppress(OSError, ValueError):
            owner = int((d / "owner.pid").read_text())
            if not Path(f"/proc/{owner}").exists() or _zombie(owner):
                found.append(d.name.removeprefix("jm-cluster-"))
    return found


def _prune_finished_runs(keep: int) -> None:
    """Logs of earlier runs, but the newest `keep`; a run still going (more than its logs) stays."""
    runs = sorted(Path("/tmp").glob("jm-cluster-*"), key=lambda d: d.stat().st_mtime)
    for d in runs[:-keep] if keep else runs:
        with contextlib.suppress(OSError):
            if [c.name for c in d.iterdir()] == ["logs"] and not leftovers(d.name.removeprefix("jm-cluster-")):
                shutil.rmtree(d)


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), point))
    return points


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _http_ok(url: str) -> bool:
    return httpx.get(url, timeout=2).status_code == 200


def leftovers(run_id: str) -> list[str]:
    """What a run left behind on this machine (for the teardown test of the harness itself)."""
    left = []
    if Path(f"/run/netns/jm-{run_id}").exists():
        left.append(f"network namespace jm-{run_id}")
    left += [m for m in _mount_points() if m.startswith(f"/tmp/jm-cluster-{run_id}")]
    left += [str(h / f"jm-{run_id}") for h in Path("/sys/fs/cgroup").iterdir() if (h / f"jm-{run_id}").exists()]
    needle = f"/tmp/jm-cluster-{run_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if needle in cmdline and not _zombie(int(entry.name)):
                    argv = cmdline.replace(b"\0", b" ").decode(errors="replace")
                    left.append(f"process {entry.name}: {argv[:200]}")
    return left
