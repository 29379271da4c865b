#!/usr/bin/env bash
# Build the real external components the tests and `jitmesh up` talk to, at pinned
# versions, into a cache outside the clone. Reused when present.
#   scripts/tools.sh opa|etcd|kube-apiserver|kube-node|coredns|helm|node-packages|all|path NAME
set -euo pipefail

OPA_VERSION="v1.22.2"
ETCD_VERSION="v3.5.21"
KUBE_VERSION="v1.34.4"          # k8s.io/kubernetes; staging modules at v0.34.4
KUBE_STAGING_VERSION="v0.34.4"
HELM_VERSION="v3.22.0"           # renders charts/jitmesh in the chart tests
COREDNS_VERSION="v1.12.4"        # cluster DNS of the tests/cluster node
# The rest of a single-node cluster, built from k8s.io/kubernetes like kube-apiserver.
KUBE_NODE_BINARIES=(kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Debian packages of the tests/cluster node and of `make image`.
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables iproute2 util-linux mmdebstrap umoci skopeo)

CACHE="${JITMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jitmesh}"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { printf '[tools] %s\n' "$*" >&2; }

path_of() {
  case "$1" in
    opa) echo "$BIN/opa-$OPA_VERSION" ;;
    etcd) echo "$BIN/etcd-$ETCD_VERSION" ;;
    kube-apiserver) echo "$BIN/kube-apiserver-$KUBE_VERSION" ;;
    helm) echo "$BIN/helm-$HELM_VERSION" ;;
    coredns) echo "$BIN/coredns-$COREDNS_VERSION" ;;
    kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) echo "$BIN/$1-$KUBE_VERSION" ;;
    *) echo "unknown tool: $1 (expected opa, etcd, kube-apiserver, ${KUBE_NODE_BINARIES[*]}, coredns or helm)" >&2
       exit 2 ;;
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
  # `go install go.etcd.io/etcd/server/v3@VERSION` is refused: the server module has replace
  # directives for its sibling modules. A wrapper module pins every sibling instead.
  local mod="$CACHE/src/etcd-$ETCD_VERSION"
  local minor="${ETCD_VERSION#v3.}"   # 5.21 -> client/v2 is v2.305.21
  mkdir -p "$mod"
  {
    echo "module jitmesh.local/etcd-build"
    echo
    echo "go 1.23"
    echo
    echo "require ("
    for m in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3 raft/v3; do
      echo "  go.etcd.io/etcd/$m $ETCD_VERSION"
    done
    echo "  go.etcd.io/etcd/client/v2 v2.30${minor%%.*}.${minor#*.}"
    echo ")"
  } > "$mod/go.mod"
  # etcd 3.5's server binary is the main package at the root of the server module.
  cat > "$mod/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$mod" && GOFLAGS=-mod=mod go mod tidy \
     && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$out.part" go.etcd.io/etcd/server/v3)
  mv "$out.part" "$out"
  log "etcd ready: $out"
}

build_helm() {
  local out; out=$(path_of helm)
  [ -x "$out" ] && return 0
  log "building helm $HELM_VERSION (first time only; a few minutes)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$out.part" && mv "$out.part" "$out" && rm -rf "$tmp"
  log "helm ready: $out"
}

# What `kube-apiserver --version` and /version report: without these a go-built binary says
# v0.0.0-master+$Format:%H$, which fails every chart's kubeVersion constraint.
kube_version_ldflags() {
  local v="${KUBE_VERSION#v}" flags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=${v%%.*}"
    flags+=" -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$flags"
}

# One wrapper module for every Kubernetes binary, so they share one go.sum and one build cache.
kube_module() {
  local mod="$CACHE/src/kubernetes-$KUBE_VERSION"
  mkdir -p "$mod"
  local staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go
    cloud-provider cluster-bootstrap code-generator component-base component-helpers
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
    sample-apiserver sample-cli-plugin sample-controller)
  if [ ! -f "$mod/go.sum" ]; then
    {
      echo "module jitmesh.local/kubernetes-build"
      echo
      echo "go 1.24"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      for s in "${staging[@]}"; do echo "replace k8s.io/$s => k8s.io/$s $KUBE_STAGING_VERSION"; done
    } > "$mod/go.mod"
    {
      printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for b in kube-apiserver "${KUBE_NODE_BINARIES[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
      printf ')\n'
    } > "$mod/tools.go"
    # tidy -e: k8s.io/kubernetes has test-only imports that need not resolve; its log stays beside go.mod
    (cd "$mod" && GOFLAGS=-mod=mod go mod tidy -e >"$mod/tidy.log" 2>&1) \
      || log "go mod tidy reported errors: $mod/tidy.log"
  fi
  echo "$mod"
}

build_kube() {
  local name="$1" out mod; out=$(path_of "$name")
  [ -x "$out" ] && return 0
  log "building $name $KUBE_VERSION (first time only; minutes, many for the first of them)"
  mod=$(kube_module)
  (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -tags tools -trimpath -ldflags "$(kube_version_ldflags)" \
     -o "$out.part" "k8s.io/kubernetes/cmd/$name")
  mv "$out.part" "$out"
  log "$name ready: $out"
}

build_kube_node() {
  local b
  for b in "${KUBE_NODE_BINARIES[@]}"; do build_kube "$b"; done
}

build_coredns() {
  local out; out=$(path_of coredns)
  [ -x "$out" ] && return 0
  log "building CoreDNS $COREDNS_VERSION (first time only; a few minutes)"
  local tmp; tmp=$(mktemp -d)
  GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$tmp/coredns" "$out.part" && mv "$out.part" "$out" && rm -rf "$tmp"
  log "CoreDNS ready: $out"
}

# containerd, runc, CNI plugins, iptables and the image tools, from Debian, when missing.
install_node_packages() {
  local missing=() p
  for p in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    log "needs root to install ${missing[*]} (apt-get install -y --no-install-recommends ${missing[*]})"
    return 1
  fi
  log "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

case "${1:-all}" in
  opa) build_opa ;;
  etcd) build_etcd ;;
  kube-apiserver) build_kube kube-apiserver ;;
  kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl) build_kube "$1" ;;
  kube-node) build_kube_node ;;
  coredns) build_coredns ;;
  helm) build_helm ;;
  node-packages) install_node_packages ;;
  all) build_opa; build_etcd; build_kube kube-apiserver; build_helm ;;
  path) path_of "$2" ;;
  *) echo "usage: $0 opa|etcd|kube-apiserver|kube-node|coredns|helm|node-packages|all|path NAME" >&2; exit 2 ;;
esac
