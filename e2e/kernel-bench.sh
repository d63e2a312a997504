#!/usr/bin/env bash
# e2e/kernel-bench.sh [FILTER...]
#
# Builds crates/odp/tests/kernel_bench*.rs (optimized) and runs the benchmarks inside one
# guest boot (e2e/vm.sh). Each benchmark prints "BENCH ..." lines with its figures and a
# baseline measured in the same run. Sizes: WEFT_BENCH_FLOWS, WEFT_BENCH_DPCTL,
# WEFT_BENCH_PACKETS. The guest runs under TCG, so absolute figures are far below real
# hardware; the ratios are what compare.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO=${CARGO:-cargo}
tests=()
for f in crates/odp/tests/kernel_bench*.rs; do
  [ -f "$f" ] && tests+=(--test "$(basename "$f" .rs)")
done
[ ${#tests[@]} -gt 0 ] || { echo "kernel-bench: no crates/odp/tests/kernel_bench*.rs" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-kernel-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
$CARGO test --locked --release -p odp "${tests[@]}" --no-run --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' >"$work/bins"
[ -s "$work/bins" ] || { echo "kernel-bench: cargo produced no benchmark binary" >&2; exit 1; }
exec "$HERE/vm.sh" "$HERE/kernel-tests.sh" --in-guest "$work/bins" --nocapture "$@"
