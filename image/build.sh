#!/usr/bin/env bash
# The project's images as OCI archives, built without a registry or a container engine:
#   jitmesh  a Debian rootfs (mmdebstrap, Debian's python3) and a venv with requirements.lock
#            and the project's wheel, and the pinned OPA as $OPA_IN_IMAGE (the broker builds the
#            proxies' access policy as Wasm with it); user 65532, entrypoint `jitmesh` (as Dockerfile)
#   opa      the pinned static OPA build alone
#   pause    the pod sandbox process (image/pause.c, static)
#   coredns  the pinned CoreDNS build alone
# Each archive is cached under ~/.cache/jitmesh/images, named by a hash of what went into it,
# so a second run with nothing changed only prints.
#   image/build.sh [all|jitmesh|opa|pause|coredns]   build, then print ref, archive, size
#   image/build.sh list                              build all, print "REF<TAB>ARCHIVE" lines
set -euo pipefail
shopt -s inherit_errexit

REPO="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$REPO/scripts/tools.sh"
CACHE="${JITMESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jitmesh}"
OUT="$CACHE/images"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

# What the image is; tests/unit/test_image_recipes.py holds Dockerfile to the same.
LOCK="requirements.lock"
IMAGE_USER="65532:65532"
ENTRYPOINT="jitmesh"
VENV="/opt/jitmesh"
OPA_IN_IMAGE="/usr/local/bin/opa"
APP_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)"
JITMESH_REF="ghcr.io/jitmesh/jitmesh:$APP_VERSION"     # the chart's default image
OPA_REF="docker.io/openpolicyagent/opa:$(basename "$("$TOOLS" path opa)" | sed 's/^opa-v//')-static"
PAUSE_REF="jitmesh.local/pause:1"
COREDNS_REF="jitmesh.local/coredns:$(basename "$("$TOOLS" path coredns)" | sed 's/^coredns-//')"

DEBIAN_SUITE="bookworm"         # its python3 is 3.11, as the lock was resolved for
BASE_PACKAGES="python3,python3-venv,ca-certificates"
MIRROR="${JITMESH_DEBIAN_MIRROR:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

log() { printf '[image] %s\n' "$*" >&2; }
key() { sha256sum | cut -c1-16; }
need() {
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "missing ${missing[*]}: scripts/tools.sh node-packages installs them (as root)"
    exit 1
  fi
}

# oci_pack NAME REF ROOTFS ARCHIVE CONFIG-ARGS...: ROOTFS as the one layer of REF in ARCHIVE.
oci_pack() {
  local name="$1" ref="$2" rootfs="$3" archive="$4"; shift 4
  local work; work=$(mktemp -d "$OUT/.pack-$name.XXXXXX")
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$name"
  umoci unpack --image "$work/layout:$name" "$work/bundle" >/dev/null
  rmdir "$work/bundle/rootfs" && mv "$rootfs" "$work/bundle/rootfs"
  umoci repack --image "$work/layout:$name" "$work/bundle"
  umoci config --image "$work/layout:$name" --os linux --architecture amd64 "$@"
  umoci gc --layout "$work/layout"
  skopeo copy -q "oci:$work/layout:$name" "oci-archive:$archive.part:$ref"
  mv "$archive.part" "$archive"
  rm -rf "$work"
}

report() {
  local ref="$1" archive="$2"
  printf '%-48s %6s  %s\n' "$ref" "$(du -h "$archive" | cut -f1)" "$archive"
}

# --- the Debian base of the jitmesh image --------------------------------------------------

base_rootfs() {
  local k; k=$(printf '%s\n' "$DEBIAN_SUITE" "$BASE_PACKAGES" "$MIRROR" | key)
  local tar="$OUT/base-$DEBIAN_SUITE-$k.tar"
  if [ ! -f "$tar" ]; then
    need mmdebstrap
    log "Debian $DEBIAN_SUITE rootfs with $BASE_PACKAGES (mmdebstrap; first time only)"
    mmdebstrap -q --variant=essential --include="$BASE_PACKAGES" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
      "$DEBIAN_SUITE" "$tar.part.tar" "$MIRROR"
    mv "$tar.part.tar" "$tar"
  fi
  echo "$tar"
}

# --- jitmesh ---------------------------------------------------------------------------

project_key() {
  (cd "$REPO" && {
    sha256sum image/build.sh "$LOCK" pyproject.toml README.md
    find jitmesh pdp injector sidecar proxy -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum
    sha256sum "$("$TOOLS" path opa)" | cut -d' ' -f1
  } | key)
}

wheelhouse() {
  local dir; dir="$CACHE/wheels/$(key < "$REPO/$LOCK")"
  if [ ! -f "$dir/.complete" ]; then
    log "downloading the locked wheels (first time only)"
    mkdir -p "$dir"
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.11 --implementation cp \
      -r "$REPO/$LOCK" -d "$dir"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

build_jitmesh() {
  local base k archive
  "$TOOLS" opa
  base=$(base_rootfs)
  k=$(printf '%s %s\n' "$(basename "$base")" "$(project_key)" | key)
  archive="$OUT/jitmesh-$APP_VERSION-$k.tar"
  if [ ! -f "$archive" ]; then
    need umoci skopeo chroot
    local wheels work rootfs
    wheels=$(wheelhouse)
    work=$(mktemp -d "$OUT/.jitmesh.XXXXXX")
    rootfs="$work/rootfs"
    log "jitmesh image: $LOCK and the project into $VENV"
    mkdir -p "$rootfs" && tar -C "$rootfs" -xf "$base"
    mkdir -p "$rootfs/tmp/wheels"
    cp "$wheels"/*.whl "$REPO/$LOCK" "$rootfs/tmp/wheels/"
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$rootfs/tmp/wheels" "$REPO" >/dev/null
    local project_wheel; project_wheel=$(cd "$rootfs/tmp/wheels" && ls jitmesh-*.whl)
    # the rootfs' own python3 makes the venv, so the image runs Debian's interpreter; nothing
    # of this machine's environment (pip settings) reaches it
    local in_root=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs")
    "${in_root[@]}" /usr/bin/python3 -m venv "$VENV"
    "${in_root[@]}" "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index \
      --find-links /tmp/wheels -r "/tmp/wheels/$LOCK"
    "${in_root[@]}" "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps \
      "/tmp/wheels/$project_wheel"
    "${in_root[@]}" "$VENV/bin/python" -m pip uninstall -q -y pip setuptools
    rm -rf "$rootfs/tmp/wheels" "$rootfs/root/.cache"
    install -m 0755 "$("$TOOLS" path opa)" "$rootfs$OPA_IN_IMAGE"
    printf 'jitmesh:x:65532:65532:jitmesh:/nonexistent:/usr/sbin/nologin\n' >> "$rootfs/etc/passwd"
    printf 'jitmesh:x:65532:\n' >> "$rootfs/etc/group"
    oci_pack jitmesh "$JITMESH_REF" "$rootfs" "$archive" \
      --config.user "$IMAGE_USER" --config.entrypoint "$ENTRYPOINT" --config.workingdir / \
      --config.env "PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
      --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1
    rm -rf "$work"
    # each change of the tree makes a new archive (make test rebuilds it): keep the newest three
    ls -t "$OUT"/jitmesh-*.tar 2>/dev/null | tail -n +4 | xargs -r rm -f
  fi
  report "$JITMESH_REF" "$archive"
}

# --- single-file images ------------------------------------------------------------------

# single NAME REF BINARY ENTRYPOINT USER: BINARY as /ENTRYPOINT, nothing else.
single() {
  local name="$1" ref="$2" bin="$3" entry="$4" user="$5" k archive
  k=$( { sha256sum "$bin" | cut -d' ' -f1; echo "$ref $entry $user"; sed -n '/^oci_pack()/,/^}/p' "$0"; } | key)
  archive="$OUT/$name-$k.tar"
  if [ ! -f "$archive" ]; then
    need umoci skopeo
    local work; work=$(mktemp -d "$OUT/.$name.XXXXXX")
    mkdir -p "$work/rootfs/tmp" && chmod 1777 "$work/rootfs/tmp"
    install -m 0755 "$bin" "$work/rootfs/$entry"
    oci_pack "$name" "$ref" "$work/rootfs" "$archive" --config.user "$user" --config.entrypoint "/$entry"
    rm -rf "$work"
  fi
  report "$ref" "$archive"
}

build_opa() {
  "$TOOLS" opa
  single opa "$OPA_REF" "$("$TOOLS" path opa)" opa 65532:65532
}

build_coredns() {
  "$TOOLS" coredns
  single coredns "$COREDNS_REF" "$("$TOOLS" path coredns)" coredns 0:0
}

build_pause() {
  local bin; bin="$CACHE/bin/pause-$(key < "$REPO/image/pause.c")"
  if [ ! -x "$bin" ]; then
    need gcc
    gcc -static -O2 -s -o "$bin.part" "$REPO/image/pause.c" && mv "$bin.part" "$bin"
  fi
  single pause "$PAUSE_REF" "$bin" pause 65535:65535
}

mkdir -p "$OUT" "$CACHE/bin"
case "${1:-all}" in
  jitmesh) build_jitmesh ;;
  opa) build_opa ;;
  pause) build_pause ;;
  coredns) build_coredns ;;
  all) build_jitmesh; build_opa; build_pause; build_coredns ;;
  list)
    for b in jitmesh opa pause coredns; do "build_$b"; done | awk '{print $1 "\t" $3}' ;;
  *) echo "usage: $0 all|jitmesh|opa|pause|coredns|list" >&2; exit 2 ;;
esac
