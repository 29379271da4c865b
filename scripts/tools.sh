#!/usr/bin/env bash
# Build the real external components the tests and `jitmesh up` talk to, at pinned
# versions, into a cache outside the clone. Reused when present.
#   scripts/tools.sh opa|etcd|kube-apiserver|all|path NAME
set -euo pipefail

OPA_VERSION="v1.22.2"
ETCD_VERSION="v3.5.21"
KUBE_VERSION="v1.34.4"          # k8s.io/kubernetes; staging modules at v0.34.4
KUBE_STAGING_VERSION="v0.34.4"

CACHE="${JITMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jitmesh}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '[tools] %s\n' "$*" >&2; }

path_of() {
  case "$1" in
    opa) echo "$BIN/opa-$OPA_VERSION" ;;
    etcd) echo "$BIN/etcd-$ETCD_VERSION" ;;
    kube-apiserver) echo "$BIN/kube-apiserver-$KUBE_VERSION" ;;
    *) echo "unknown tool: $1 (expected opa, etcd or kube-apiserver)" >&2; exit 2 ;;
  esac
}

build_opa() {
  local out; out=$(path_of opa)
  [ -x "$out" ] && return 0
  log "building OPA $OPA_VERSION (first time only; a few minutes)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 go install "github.com/open-policy-agent/opa@$OPA_VERSION"
  mv "$tmp/opa" "$out.part" && mv "$out.part" "$out" && rm -rf "$tmp"
  log "OPA ready: $out"
}

build_etcd() {
  local out; out=$(path_of etcd)
  [ -x "$out" ] && return 0
  log "building etcd $ETCD_VERSION (first time only; a few minutes)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 go install "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  # the server module's main package is named server/v3 and installs as "v3"
  mv "$tmp"/* "$out.part" && mv "$out.part" "$out" && rm -rf "$tmp"
  log "etcd ready: $out"
}

build_kube_apiserver() {
  local out; out=$(path_of kube-apiserver)
  [ -x "$out" ] && return 0
  log "building kube-apiserver $KUBE_VERSION (first time only; this takes many minutes)"
  local mod="$CACHE/src/kube-apiserver-$KUBE_VERSION"
  mkdir -p "$mod"
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
  {
    echo "module jitmesh.local/kube-apiserver-build"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    for s in "${staging[@]}"; do echo "replace k8s.io/$s => k8s.io/$s $KUBE_STAGING_VERSION"; done
  } > "$mod/go.mod"
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
GO
  (cd "$mod" && GOFLAGS=-mod=mod go mod tidy -e >/dev/null 2>&1 || true
   cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -tags tools -o "$out.part" k8s.io/kubernetes/cmd/kube-apiserver)
  mv "$out.part" "$out"
  log "kube-apiserver ready: $out"
}

case "${1:-all}" in
  opa) build_opa ;;
  etcd) build_etcd ;;
  kube-apiserver) build_kube_apiserver ;;
  all) build_opa; build_etcd; build_kube_apiserver ;;
  path) path_of "$2" ;;
  *) echo "usage: $0 opa|etcd|kube-apiserver|all|path NAME" >&2; exit 2 ;;
esac
