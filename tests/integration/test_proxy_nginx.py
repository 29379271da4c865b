"""`/v1/check` behind a real nginx (Debian's package) with `auth_request`, started by the
test on loopback with its own prefix and config (docs/contract.md §7)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jitmesh.procs import ManagedProcess, free_port, wait_http
from proxy.process import ProxyProcess
from tests.fixtures.broker import BrokerHandle
from tests.fixtures.proxy import Upstream

POLICIES = Path(__file__).resolve().parents[2] / "policies"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      auth_request /_jitmesh_check;
      auth_request_set $jitmesh_subject $upstream_http_x_jitmesh_subject;
      auth_request_set $jitmesh_scope $upstream_http_x_jitmesh_scope;
      auth_request_set $jitmesh_decision $upstream_http_x_jitmesh_decision_id;
      proxy_set_header Authorization "";
      proxy_set_header DPoP "";
      proxy_set_header X-Jitmesh-Subject $jitmesh_subject;
      proxy_set_header X-Jitmesh-Scope $jitmesh_scope;
      proxy_set_header X-Jitmesh-Decision-Id $jitmesh_decision;
      proxy_pass {upstream};
    }}
    location = /_jitmesh_check {{
      internal;
      proxy_pass {check}/v1/check;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}
}}
"""


@pytest.fixture
def nginx_front(tmp_path: Path, make_opa: Callable[..., Any], broker_factory: Callable[..., BrokerHandle],
                make_proxy: Callable[..., ProxyProcess], upstream: Upstream) -> Iterator[dict[str, Any]]:
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: apt-get install -y nginx")
    opa = make_opa(POLICIES)
    broker = broker_factory(opa.url)
    checker = make_proxy(broker, ["orders-api"], opa_url=opa.url)  # no --upstream: /v1/check only
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(CONFIG.format(prefix=prefix, port=port, upstream=upstream.url, check=checker.url))
    nginx = ManagedProcess("nginx", [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                           prefix / "stdout.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/orders", proc=nginx.proc, ok=(401,))
    yield {"url": url, "broker": broker}
    nginx.stop()


def token(broker: BrokerHandle) -> str:
    r = broker.exchange(broker.mint("demo", "demo-app"), "orders-api", scope="read", ttl=120)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def test_nginx_forwards_an_allowed_request_with_the_subject_from_check(nginx_front: dict[str, Any]) -> None:
    r = httpx.get(nginx_front["url"] + "/orders/5", headers={"Authorization": f"Bearer {token(nginx_front['broker'])}",
                                                             "X-Jitmesh-Subject": "forged"})
    assert r.status_code == 200, r.text
    seen = dict(r.json()["headers"])
    assert seen["x-jitmesh-subject"] == "system:serviceaccount:demo:demo-app"
    assert seen["x-jitmesh-scope"] == "read" and seen["x-jitmesh-decision-id"]
    assert "authorization" not in seen


def test_nginx_refuses_what_the_policy_denies_with_403(nginx_front: dict[str, Any]) -> None:
    r = httpx.delete(nginx_front["url"] + "/orders/5",
                     headers={"Authorization": f"Bearer {token(nginx_front['broker'])}"})
    assert r.status_code == 403


def test_nginx_refuses_a_request_without_a_token_with_401(nginx_front: dict[str, Any]) -> None:
    assert httpx.get(nginx_front["url"] + "/orders/5").status_code == 401
