#!/usr/bin/env bash
# e2e/kernel-tests.sh [FILTER...]
#
# Builds the kernel test binaries (crates/odp/tests/kernel*.rs and agent/tests/kernel*.rs),
# weftctl and weft-agent on the host, boots the guest once (e2e/vm.sh) and runs every one of
# their ignored tests inside it, one thread at a time. The binaries' paths reach the guest as
# WEFT_CTL_BIN and WEFT_AGENT_BIN (the three-host tests run one weft-agent per host), the CNI
# plugin and libcni's cnitool as WEFT_CNI_BIN and WEFT_CNITOOL.
# Fails if any test fails, if the guest cannot boot, or if no test ran at all.
# FILTER arguments are passed to the test binaries (substring match on test names).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

if [ "${1:-}" = --in-guest ]; then
  # Inside the guest: $2 is the directory with the list of binaries, the rest are filters.
  shift; list=$1; shift
  modprobe -a openvswitch vxlan geneve veth sctp || { echo "kernel-tests: modprobe failed" >&2; exit 1; }
  # The NIC on QEMU's user network (vm.sh WEFT_VM_HOSTNET=1, known by its MAC): the host's
  # control plane is at 10.0.2.2. Only that address is routed through it. The tests that need
  # it see WEFT_GUEST_HOSTNET=1.
  modprobe virtio_net 2>/dev/null || true
  nic=
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = 52:54:00:12:34:56 ] && nic=$(basename "$d")
  done
  if [ -n "$nic" ]; then
    ip link set "$nic" name weft-hostnet
    ip addr add 10.0.2.15/32 dev weft-hostnet
    ip link set weft-hostnet up
    ip route add 10.0.2.2/32 dev weft-hostnet
    export WEFT_GUEST_HOSTNET=1
  fi
  total=0; failed=0
  while read -r bin; do
    echo "==> $(basename "$bin") (in the guest, kernel $(uname -r))"
    out=$(mktemp)
    set +e
    "$bin" --ignored --test-threads=1 "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    set -e
    n=$(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1 \2/p' "$out" | awk '{p+=$1; f+=$2} END {print p+f}')
    total=$((total + ${n:-0}))
    [ "$rc" = 0 ] || failed=$((failed + 1))
    rm -f "$out"
  done <"$list"
  echo "==> kernel tests: $total ran, $failed binaries failed"
  [ "$failed" = 0 ] || exit 1
  [ "$total" -gt 0 ] || { echo "kernel-tests: no test ran" >&2; exit 1; }
  exit 0
fi

cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO=${CARGO:-cargo}
echo "==> building weftctl, weft-agent and the kernel test binaries" >&2
# The binaries (weft-agent, weftctl, weft-cni, weft-operator) and every test, as `make
# unit-test` builds them: the same features, so after it nothing is compiled again. A
# narrower selection of packages, or `cargo build`, unifies other features and compiles the
# workspace's crates once more.
$CARGO test --locked --workspace --no-run >&2
WEFT_OPERATOR_BIN=$CARGO_TARGET_DIR/debug/weft-operator
WEFT_CTL_BIN=$CARGO_TARGET_DIR/debug/weftctl
WEFT_AGENT_BIN=$CARGO_TARGET_DIR/debug/weft-agent
WEFT_CNI_BIN=$CARGO_TARGET_DIR/debug/weft-cni
[ -x "$WEFT_CNI_BIN" ] || { echo "kernel-tests: weft-cni was not built at $WEFT_CNI_BIN" >&2; exit 1; }
# libcni's cnitool and the reference plugins, built by `make tools` (e2e/tools.sh).
. "$HERE/cni-tools.sh"
export WEFT_CNI_BIN
[ -x "$WEFT_CTL_BIN" ] || { echo "kernel-tests: weftctl was not built at $WEFT_CTL_BIN" >&2; exit 1; }
[ -x "$WEFT_AGENT_BIN" ] || { echo "kernel-tests: weft-agent was not built at $WEFT_AGENT_BIN" >&2; exit 1; }
# kernel_bench*.rs are benchmarks: e2e/kernel-bench.sh runs them.
kernel_tests() { # DIR: cargo --test arguments for DIR/kernel*.rs
  local f args=()
  for f in "$1"/kernel*.rs; do
    [ -f "$f" ] || continue
    case $(basename "$f") in kernel_bench*) continue ;; esac
    args+=(--test "$(basename "$f" .rs)")
  done
  [ ${#args[@]} -gt 0 ] || { echo "kernel-tests: no $1/kernel*.rs" >&2; exit 1; }
  printf '%s\n' "${args[@]}"
}
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-kernel-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
: >"$work/bins"
tests=()
for dir in crates/odp/tests agent/tests; do
  mapfile -t more < <(kernel_tests "$dir")
  [ ${#more[@]} -gt 0 ] || exit 1
  tests+=("${more[@]}")
done
# Only the test targets: building tests also reports binaries (weftctl).
$CARGO test --locked --workspace "${tests[@]}" --no-run --message-format=json |
  grep -F '"kind":["test"]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' >>"$work/bins"
[ -s "$work/bins" ] || { echo "kernel-tests: cargo produced no test binary" >&2; exit 1; }
export WEFT_CTL_BIN WEFT_AGENT_BIN WEFT_OPERATOR_BIN
. "$HERE/guest-controlplane.sh"
# The whole kernel suite runs in one boot; under emulation on a loaded 2-core machine it has
# taken over 30 minutes, so the guest gets an hour unless told otherwise.
export WEFT_VM_TIMEOUT=${WEFT_VM_TIMEOUT:-3600}
"$HERE/vm.sh" "$HERE/kernel-tests.sh" --in-guest "$work/bins" "$@"
