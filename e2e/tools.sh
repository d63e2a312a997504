#!/usr/bin/env bash
# e2e/tools.sh [NAME...]
#
# Builds the Go tools the control-plane and CNI harnesses use, from the Go module proxy, and
# caches each by version, so a warm run builds nothing. NAME is one of
#   kube-apiserver kubectl etcd helm cnitool cni-plugins
# (default: all of them). For each it prints NAME=PATH on stdout.
#
# Layout under WEFT_CACHE_DIR (default ~/.cache/weft):
#   bin/<name>-<version>       the binary, and bin/<name> a symlink to it
#   cni/bin-<version>/         bridge, host-local and loopback; cni/bin a symlink to it
#   go/{path,cache,mod}        GOPATH, GOCACHE and GOMODCACHE
#   go/src/<wrapper>-<version> the generated wrapper modules (kube-apiserver and etcd need one:
#                              `go install pkg@version` refuses modules with replace directives)
#   lock/<name>.lock           flock(1) locks, so parallel callers build each tool once
#
# Once every tool is built, the Go build and module caches (several GB) are removed: the
# binaries are cached by version, so nothing needs them again until a version changes.
#
# Builds run at nice 19: kube-apiserver alone takes about 7 CPU-minutes. With WEFT_TOOLS_NO_BUILD=1
# a missing tool is an error instead of a build (tests use this: they never build for minutes).
set -euo pipefail
shopt -s inherit_errexit

K8S_VERSION=v1.35.4
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
CNITOOL_VERSION=v1.3.1
CNI_PLUGINS_VERSION=v1.10.0
ALL=(kube-apiserver kubectl etcd helm cnitool cni-plugins)

die() { printf 'e2e/tools.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'e2e/tools.sh: %s\n' "$*" >&2; }

command -v go >/dev/null 2>&1 || die "go is not installed (Go >= 1.25 is needed to build the tools)"
command -v flock >/dev/null 2>&1 || die "flock is not installed (util-linux)"

CACHE=${WEFT_CACHE_DIR:-${HOME:-/root}/.cache/weft}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
BIN=$CACHE/bin
mkdir -p "$BIN" "$CACHE/lock" "$CACHE/go/src" "$CACHE/cni"

export GOPATH=$CACHE/go/path GOCACHE=$CACHE/go/cache GOMODCACHE=$CACHE/go/mod
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0
export GOPROXY=${GOPROXY:-https://proxy.golang.org,direct}

# Everything below may compile for minutes on a shared machine: stay out of the way.
gonice() { nice -n 19 go "$@"; }

# must_build NAME VERSION: called before a build; fails under WEFT_TOOLS_NO_BUILD=1.
must_build() {
  [ "${WEFT_TOOLS_NO_BUILD:-0}" != 1 ] ||
    die "$1 $2 is not built in $CACHE: run e2e/tools.sh $1 (WEFT_CACHE_DIR=$CACHE)"
}

# with_lock NAME CMD...: runs CMD under NAME's lock.
with_lock() {
  local name=$1
  shift
  (
    flock -s 8
    flock 9
    "$@"
  ) 9>"$CACHE/lock/$name.lock" 8>"$CACHE/lock/go.lock"
}

# link NAME TARGET: points the stable name at the versioned file and prints it.
link() {
  ln -sfn "$(basename "$2")" "$(dirname "$2")/$1"
  printf '%s=%s\n' "$1" "$2"
}

# The wrapper module for kube-apiserver and kubectl: k8s.io/kubernetes with each staging
# module (`k8s.io/<name> => ./staging/...` upstream) replaced by its published v0 version.
k8s_wrapper() {
  local dir=$CACHE/go/src/kubernetes-$K8S_VERSION
  [ -f "$dir/.tidy" ] && { echo "$dir"; return; }
  local staging_version=v0.${K8S_VERSION#v1.}
  say "generating the k8s.io/kubernetes $K8S_VERSION wrapper module in $dir"
  local gomod
  gomod=$(gonice mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || die "go mod download k8s.io/kubernetes@$K8S_VERSION gave no go.mod"
  local staging
  staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
  local n
  n=$(printf '%s\n' "$staging" | grep -c . || true)
  [ "$n" -gt 0 ] || die "no staging modules found in $gomod"
  rm -rf "$dir"
  mkdir -p "$dir"
  {
    printf 'module weft.dev/e2e-tools/kubernetes\n\ngo 1.25\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    printf '%s\n' "$staging" | while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    printf ')\n'
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  say "$n staging modules replaced by $staging_version; go mod tidy"
  (cd "$dir" && gonice mod tidy) >&2
  touch "$dir/.tidy"
  echo "$dir"
}

k8s_ldflags() {
  local minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  echo "-s -w$f"
}

# build_k8s NAME: kube-apiserver or kubectl, from the wrapper module.
build_k8s() {
  local name=$1 out=$BIN/$1-$K8S_VERSION
  if [ ! -x "$out" ]; then
    must_build "$name" "$K8S_VERSION"
    local dir
    dir=$(with_lock k8s-wrapper k8s_wrapper)
    say "building $name $K8S_VERSION (nice 19; kube-apiserver alone takes about 7 CPU-minutes)"
    local start=$SECONDS
    (cd "$dir" && gonice build -ldflags "$(k8s_ldflags)" -o "$out.tmp" "k8s.io/kubernetes/cmd/$name")
    mv -f "$out.tmp" "$out"
    say "built $name in $((SECONDS - start)) s"
  fi
  link "$name" "$out"
}

build_etcd() {
  local out=$BIN/etcd-$ETCD_VERSION
  if [ ! -x "$out" ]; then
    must_build etcd "$ETCD_VERSION"
    local dir=$CACHE/go/src/etcd-$ETCD_VERSION
    if [ ! -f "$dir/.tidy" ]; then
      rm -rf "$dir"
      mkdir -p "$dir"
      printf 'module weft.dev/e2e-tools/etcd\n\ngo 1.25\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$dir/go.mod"
      cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
      (cd "$dir" && gonice mod tidy) >&2
      touch "$dir/.tidy"
    fi
    say "building etcd $ETCD_VERSION (nice 19)"
    local start=$SECONDS
    (cd "$dir" && gonice build -ldflags "-s -w" -o "$out.tmp" go.etcd.io/etcd/server/v3)
    mv -f "$out.tmp" "$out"
    say "built etcd in $((SECONDS - start)) s"
  fi
  link etcd "$out"
}

# go_install NAME VERSION DEST PKG...: `go install PKG@VERSION` into DEST (a new directory).
go_install() {
  local name=$1 version=$2 dest=$3
  shift 3
  local tmp=$dest.tmp pkgs=() p
  for p in "$@"; do pkgs+=("$p@$version"); done
  rm -rf "$tmp"
  mkdir -p "$tmp"
  say "building $name $version (nice 19)"
  local start=$SECONDS
  env GOBIN="$tmp" nice -n 19 go install -ldflags "-s -w" "${pkgs[@]}" >&2
  say "built $name in $((SECONDS - start)) s"
  echo "$tmp"
}

build_helm() {
  local out=$BIN/helm-$HELM_VERSION
  if [ ! -x "$out" ]; then
    must_build helm "$HELM_VERSION"
    local tmp
    tmp=$(go_install helm "$HELM_VERSION" "$out" helm.sh/helm/v3/cmd/helm)
    mv -f "$tmp/helm" "$out"
    rm -rf "$tmp"
  fi
  link helm "$out"
}

build_cnitool() {
  local out=$BIN/cnitool-$CNITOOL_VERSION
  if [ ! -x "$out" ]; then
    must_build cnitool "$CNITOOL_VERSION"
    local tmp
    tmp=$(go_install cnitool "$CNITOOL_VERSION" "$out" github.com/containernetworking/cni/cnitool)
    mv -f "$tmp/cnitool" "$out"
    rm -rf "$tmp"
  fi
  link cnitool "$out"
}

build_cni_plugins() {
  local out=$CACHE/cni/bin-$CNI_PLUGINS_VERSION
  if [ ! -x "$out/loopback" ]; then
    must_build cni-plugins "$CNI_PLUGINS_VERSION"
    local base=github.com/containernetworking/plugins/plugins tmp
    tmp=$(go_install cni-plugins "$CNI_PLUGINS_VERSION" "$out" \
      "$base/main/bridge" "$base/ipam/host-local" "$base/main/loopback")
    rm -rf "$out"
    mv -f "$tmp" "$out"
  fi
  ln -sfn "$(basename "$out")" "$CACHE/cni/bin"
  printf 'cni-plugins=%s\n' "$out"
}

install_one() {
  case $1 in
    kube-apiserver | kubectl) with_lock "$1" build_k8s "$1" ;;
    etcd) with_lock etcd build_etcd ;;
    helm) with_lock helm build_helm ;;
    cnitool) with_lock cnitool build_cnitool ;;
    cni-plugins) with_lock cni-plugins build_cni_plugins ;;
    *) die "unknown tool '$1' (known: ${ALL[*]})" ;;
  esac
}

[ $# -gt 0 ] || set -- "${ALL[@]}"
for name in "$@"; do
  case " ${ALL[*]} " in *" $name "*) ;; *) die "unknown tool '$name' (known: ${ALL[*]})" ;; esac
done
for name in "$@"; do
  install_one "$name"
done
# Free the Go caches once all the tools exist, unless another caller is building right now.
all_built() {
  local t
  for t in "${ALL[@]}"; do
    case $t in
      cni-plugins) [ -x "$CACHE/cni/bin/loopback" ] || return 1 ;;
      *) [ -x "$BIN/$t" ] || return 1 ;;
    esac
  done
}
if all_built && { [ -d "$GOCACHE" ] || [ -d "$GOMODCACHE" ]; }; then
  (
    flock -n 8 || exit 0
    go clean -cache -modcache >/dev/null 2>&1 || true
    rm -rf "$GOCACHE" "$GOMODCACHE" "$GOPATH"
  ) 8>"$CACHE/lock/go.lock"
fi
