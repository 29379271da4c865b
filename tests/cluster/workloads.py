"""Pods, Deployments and Jobs the cluster tests create, and the application program they run
(in the jitmesh image, whose venv has httpx and PyJWT)."""

from __future__ import annotations

from typing import Any

RELEASE = "jitmesh"
RELEASE_NAMESPACE = "jitmesh"
BROKER = f"{RELEASE}-broker"          # the chart's names for release `jitmesh`
INJECTOR = f"{RELEASE}-injector"
BROKER_URL = f"http://{BROKER}.{RELEASE_NAMESPACE}.svc:8080"
JITMESH_IMAGE = "ghcr.io/jitmesh/jitmesh:0.1.0"
PAUSE_IMAGE = "jitmesh.local/pause:1"
SIDECAR = "jitmesh-sidecar"

# Fails at once when the token file is absent at start; then verifies the token against the
# broker's /jwks through its Service, asks the sidecar's /readyz, prints what it found.
APP = """
import json, os, sys, time, urllib.request
import jwt
audience = os.environ["AUDIENCE"]
path = os.path.join(os.environ.get("JITMESH_TOKEN_DIR", "/var/run/jitmesh"), audience)
if not os.path.exists(path):
    print("NO-TOKEN-AT-START " + path, flush=True)
    sys.exit(3)
token = open(path).read().strip()
jwks = json.load(urllib.request.urlopen(os.environ["BROKER_URL"] + "/jwks", timeout=10))
kid = jwt.get_unverified_header(token)["kid"]
key = next(k for k in jwt.PyJWKSet.from_dict(jwks).keys if k.key_id == kid)
claims = jwt.decode(token, key.key, algorithms=["ES256"], audience=audience)
print("VERIFIED " + json.dumps(claims, sort_keys=True), flush=True)
readyz = urllib.request.urlopen(os.environ["JITMESH_AGENT_URL"] + "/readyz", timeout=5)
print("READYZ %d" % readyz.status, flush=True)
if os.environ.get("PRINT_TOKEN") == "1":
    print("TOKEN " + token, flush=True)
if os.environ.get("STAY") == "1":
    while True:
        time.sleep(3600)
"""

RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
    "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"},
}


def app_container(audience: str, stay: bool = True, print_token: bool = False) -> dict[str, Any]:
    return {
        "name": "app", "image": JITMESH_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-c", APP],
        "env": [{"name": "AUDIENCE", "value": audience}, {"name": "BROKER_URL", "value": BROKER_URL},
                {"name": "STAY", "value": "1" if stay else "0"},
                {"name": "PRINT_TOKEN", "value": "1" if print_token else "0"}],
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
    }


def pause_container() -> dict[str, Any]:
    return {"name": "app", "image": PAUSE_IMAGE, "imagePullPolicy": "IfNotPresent",
            "securityContext": RESTRICTED_CONTAINER_SECURITY}


def pod_template(labels: dict[str, str], annotations: dict[str, str], containers: list[dict[str, Any]],
                 service_account: str = "default", restart: str = "Always") -> dict[str, Any]:
    return {
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": service_account, "containers": containers, "restartPolicy": restart,
                 "terminationGracePeriodSeconds": 5, "enableServiceLinks": True,
                 "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}},
    }


def pod(name: str, labels: dict[str, str], annotations: dict[str, str], containers: list[dict[str, Any]],
        service_account: str = "default") -> dict[str, Any]:
    template = pod_template(labels, annotations, containers, service_account)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template["metadata"]},
            "spec": template["spec"]}


def deployment(name: str, annotations: dict[str, str], containers: list[dict[str, Any]],
               service_account: str) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": pod_template(labels, annotations, containers, service_account)}}


def job(name: str, annotations: dict[str, str], containers: list[dict[str, Any]],
        service_account: str) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600,
                     "template": pod_template({"app": name}, annotations, containers, service_account,
                                              restart="Never")}}


def read_token_file(audience: str) -> str:
    """Code for Kube.exec: print the token file of `audience` as the app sees it now."""
    return ("import os; print(open(os.path.join(os.environ['JITMESH_TOKEN_DIR'], "
            f"{audience!r})).read().strip())")


# An upstream behind an access proxy: 200 for any path, echoing the x-jitmesh-* headers it got
# and whether a token reached it (it never should).
SERVER = """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Echo(BaseHTTPRequestHandler):
    def answer(self):
        seen = {k.lower(): v for k, v in self.headers.items()}
        body = json.dumps({"path": self.path, "method": self.command,
                           "jitmesh": {k: v for k, v in seen.items() if k.startswith("x-jitmesh-")},
                           "saw_token": "authorization" in seen}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
"""

# Calls CALL_URL with its token every CALL_EVERY seconds, for each path in CALL_PATHS, and
# prints one line per call: CALL <unix time> <path> <status> <json of what came back>. The
# token file is read afresh each time; if it is gone (a revoked sidecar may drop it), the last
# token read is sent, so a refusal is the proxy's verdict on that token.
CALLER = """
import json, os, time, urllib.error, urllib.request
path = os.path.join(os.environ.get("JITMESH_TOKEN_DIR", "/var/run/jitmesh"), os.environ["AUDIENCE"])
token = None
while True:
    try:
        token = open(path).read().strip() or token
    except OSError:
        pass
    for p in os.environ["CALL_PATHS"].split(","):
        req = urllib.request.Request(os.environ["CALL_URL"] + p, headers={"Authorization": "Bearer %s" % token})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, json.dumps({"www-authenticate": e.headers.get("www-authenticate"),
                                               "body": e.read().decode(errors="replace")[:300]}).encode()
        except Exception as e:
            status, body = 0, json.dumps({"error": repr(e)[:200]}).encode()
        print("CALL %.3f %s %d %s" % (time.time(), p, status, body.decode(errors="replace")), flush=True)
    time.sleep(float(os.environ.get("CALL_EVERY", "0.1")))
"""


def server_container() -> dict[str, Any]:
    return {"name": "app", "image": JITMESH_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", SERVER], "securityContext": RESTRICTED_CONTAINER_SECURITY,
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}}}


def caller_container(audience: str, url: str, paths: list[str], every: float = 0.1) -> dict[str, Any]:
    return {"name": "app", "image": JITMESH_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", CALLER],
            "env": [{"name": "AUDIENCE", "value": audience}, {"name": "CALL_URL", "value": url},
                    {"name": "CALL_PATHS", "value": ",".join(paths)}, {"name": "CALL_EVERY", "value": str(every)}],
            "securityContext": RESTRICTED_CONTAINER_SECURITY,
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "96Mi"}}}


def service(name: str, selector: dict[str, str], port: int, target_port: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"port": port, "targetPort": target_port, "protocol": "TCP"}]}}
