# jitmesh: `make run` and `make test` each do all their own set-up; both are idempotent.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS := scripts/tools.sh
OPA = $(shell $(TOOLS) path opa)
PYTEST_ARGS ?=
ARGS ?=

.PHONY: all setup tools opa kube-tools cluster-tools cluster-images postgres nginx run test lint policy-test bench clean chart-policies image lock

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing Python dependencies into $(VENV)"
	@$(PY) -m pip install --disable-pip-version-check -q --upgrade pip
	@$(PY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) opa

opa:
	@$(TOOLS) opa

kube-tools:
	@$(TOOLS) etcd
	@$(TOOLS) kube-apiserver
	@$(TOOLS) helm

tools: opa kube-tools

# The single-node cluster of tests/cluster: the node's Debian packages (containerd, runc, CNI
# plugins, iptables, the image tools), the rest of Kubernetes, CoreDNS. Without root the package
# step only says what is missing, and the cluster tests fail naming it.
cluster-tools: kube-tools
	@if [ "$${JITMESH_SKIP_CLUSTER:-}" = 1 ]; then echo "[setup] JITMESH_SKIP_CLUSTER=1: no cluster tools"; else \
	  $(TOOLS) node-packages || echo "[setup] the cluster tests will fail: node packages missing (see above)"; \
	  $(TOOLS) kube-node && $(TOOLS) coredns; fi

# PostgreSQL server binaries: the store tests start their own server from them
postgres:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! test -x "$$(pg_config --bindir 2>/dev/null)/initdb"; then \
	  echo "[setup] installing PostgreSQL server binaries (apt-get install postgresql)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	fi

# nginx: the access proxy's /v1/check tests start their own server from it (auth_request)
nginx:
	@if ! command -v nginx >/dev/null 2>&1 && ! test -x /usr/sbin/nginx; then \
	  echo "[setup] installing nginx (apt-get install nginx)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq nginx >/dev/null; \
	fi

run: setup
	@JITMESH_OPA_BIN=$(OPA) $(VENV)/bin/jitmesh up $(ARGS)

policy-test: setup
	@echo "[policy] opa check --strict / opa fmt / opa test"
	@$(OPA) check --strict policies/
	@$(OPA) fmt --fail --list policies/ >/dev/null || { echo "policies/ is not opa-fmt clean:"; $(OPA) fmt --list policies/; exit 1; }
	@$(OPA) test policies/ -v --var-values 2>&1 | tail -n 3

lint: setup
	@echo "[lint] ruff + mypy"
	@$(VENV)/bin/ruff check jitmesh pdp injector sidecar proxy tests bench
	@$(VENV)/bin/mypy

test: setup tools postgres nginx cluster-images policy-test lint
	@echo "[test] pytest"
	@JITMESH_OPA_BIN=$(OPA) \
	 JITMESH_ETCD_BIN=$(shell $(TOOLS) path etcd) \
	 JITMESH_KUBE_APISERVER_BIN=$(shell $(TOOLS) path kube-apiserver) \
	 $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	@command -v wrk >/dev/null || { echo "[bench] installing wrk (the load client)"; \
	  apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; } \
	  || echo "[bench] could not install wrk: the load sections will say so"; }
	@JITMESH_OPA_BIN=$(OPA) $(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .jitmesh .pytest_cache .mypy_cache .ruff_cache

# The images as OCI archives in ~/.cache/jitmesh/images, without a registry or container engine
image: $(STAMP) opa
	@$(TOOLS) node-packages
	@$(TOOLS) coredns
	@PYTHON=$(PY) image/build.sh all

# What tests/cluster imports into its node: the images of this tree (rebuilt when it changed)
cluster-images: $(STAMP) opa cluster-tools
	@if [ "$${JITMESH_SKIP_CLUSTER:-}" = 1 ]; then :; \
	elif [ "$$(id -u)" != 0 ]; then echo "[image] not root: no images (the cluster tests will fail saying so)"; \
	else PYTHON=$(PY) image/build.sh all; fi

# requirements.lock from pyproject.toml's dependencies (both image recipes install it)
lock:
	@$(PYTHON) scripts/lock.py

# The chart carries its own copy of the shipped policy (a chart holds no links);
# tests/unit/test_injector_chart.py keeps the copy identical.
chart-policies:
	@cp $$(ls policies/*.rego | grep -v _test.rego) policies/data.json charts/jitmesh/files/policies/
