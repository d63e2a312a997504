#!/usr/bin/env bash
# e2e/kernel-bench.sh [FILTER...]
#
# Builds the kernel benchmarks (crates/odp/tests/kernel_bench*.rs and
# agent/tests/kernel_bench*.rs) and weft-agent, all optimized, and runs the benchmarks inside
# one guest boot (e2e/vm.sh), one at a time. The agent's path reaches the guest as
# WEFT_AGENT_BIN (the agent benchmarks run one weft-agent per host namespace, with etcd in
# the guest), weft-operator as WEFT_OPERATOR_BIN with a control plane on the host
# (e2e/guest-controlplane.sh); weft-cni, cnitool and the reference CNI plugins as WEFT_CNI_BIN, WEFT_CNITOOL
# and WEFT_CNI_PLUGINS. Each benchmark prints "BENCH ..." lines with its figures and a baseline
# measured in the same run. FILTER arguments are passed to the benchmark binaries
# (substring match on benchmark names, e.g. `bench_invalidation`).
#
# Sizes: WEFT_BENCH_FLOWS, WEFT_BENCH_DPCTL, WEFT_BENCH_PACKETS (odp); WEFT_BENCH_CONNS, WEFT_BENCH_PAIRS,
# WEFT_BENCH_PAIR_CONNS, WEFT_BENCH_PAIR_TCP_CONNS,
# WEFT_BENCH_WINDOW, WEFT_BENCH_ROUNDS, WEFT_BENCH_LATENCY_FLOWS, WEFT_BENCH_RSS_FLOWS, WEFT_BENCH_RSS_PORTS,
# WEFT_BENCH_CHANGES (agent), WEFT_BENCH_PODS (CNI). The guest runs under TCG, so absolute figures are far below
# real hardware; the ratios are what compare.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO=${CARGO:-cargo}
echo "==> building weftctl, weft-agent and the kernel benchmarks (release)" >&2
$CARGO build --locked --release -p weft-agent --bin weftctl --bin weft-agent -p weft-cni --bin weft-cni \
  -p weft-operator --bin weft-operator >&2
WEFT_OPERATOR_BIN=$CARGO_TARGET_DIR/release/weft-operator
WEFT_CTL_BIN=$CARGO_TARGET_DIR/release/weftctl
WEFT_AGENT_BIN=$CARGO_TARGET_DIR/release/weft-agent
WEFT_CNI_BIN=$CARGO_TARGET_DIR/release/weft-cni
[ -x "$WEFT_CNI_BIN" ] || { echo "kernel-bench: weft-cni was not built at $WEFT_CNI_BIN" >&2; exit 1; }
# The CNI benchmark runs cnitool against weft-cni and the reference plugins.
. "$HERE/cni-tools.sh"
export WEFT_CNI_BIN
[ -x "$WEFT_CTL_BIN" ] || { echo "kernel-bench: weftctl was not built at $WEFT_CTL_BIN" >&2; exit 1; }
[ -x "$WEFT_AGENT_BIN" ] || { echo "kernel-bench: weft-agent was not built at $WEFT_AGENT_BIN" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-kernel-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
: >"$work/bins"
for pkg_dir in odp:crates/odp/tests weft-agent:agent/tests; do
  pkg=${pkg_dir%%:*} dir=${pkg_dir#*:}
  tests=()
  for f in "$dir"/kernel_bench*.rs; do
    [ -f "$f" ] && tests+=(--test "$(basename "$f" .rs)")
  done
  [ ${#tests[@]} -gt 0 ] || { echo "kernel-bench: no $dir/kernel_bench*.rs" >&2; exit 1; }
  # Only the test targets: building a package's tests also reports its binaries.
  $CARGO test --locked --release -p "$pkg" "${tests[@]}" --no-run --message-format=json |
    grep -F '"kind":["test"]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' >>"$work/bins"
done
[ -s "$work/bins" ] || { echo "kernel-bench: cargo produced no benchmark binary" >&2; exit 1; }
export WEFT_CTL_BIN WEFT_AGENT_BIN WEFT_OPERATOR_BIN
# The Kuryr benchmark measures from kubectl writes to the traffic in the guest.
. "$HERE/guest-controlplane.sh"
"$HERE/vm.sh" "$HERE/kernel-tests.sh" --in-guest "$work/bins" --nocapture "$@"
