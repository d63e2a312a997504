#!/usr/bin/env bash
# Installs what building and testing Weft needs on a fresh Debian machine. Idempotent: it installs
# only what is missing, so a warm machine spends no time here.
set -euo pipefail

say() { printf '==> %s\n' "$*"; }

# command -> Debian package that provides it
declare -A want=(
  [etcd]=etcd-server
  [protoc]=protobuf-compiler
  [qemu-system-x86_64]=qemu-system-x86
  [ovs-dpctl]=openvswitch-switch
  [ping]=iputils-ping
  [ip]=iproute2
  [depmod]=kmod
  [xz]=xz-utils
  [strace]=strace
  [cpio]=cpio
  [curl]=curl
  [openssl]=openssl
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -f /usr/include/google/protobuf/timestamp.proto ] || missing+=(libprotobuf-dev)

if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Debian's policy-rc.d keeps openvswitch-switch's services from starting on the host.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust with rustup first" >&2
  exit 1
fi
# rust-toolchain.toml pins the toolchain; make sure its components are present.
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
say "dependencies ready"
