#!/usr/bin/env bash
# The Weft demo: a private etcd as the network state database (NSDB), the operator's translation
# of the example topology in examples/ into NSDB records, and what NSDB then holds; then the
# same topology running: three hosts in a QEMU guest with Debian's kernel (its OVS datapath),
# one weft-agent per host, four pods attached through weft-cni by libcni's cnitool, and the
# reachability matrix between them.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "building weft-operator"
cargo build --quiet --locked -p weft-operator
bin="${CARGO_TARGET_DIR:-target}/debug/weft-operator"

work=$(mktemp -d /tmp/weft-demo.XXXXXX)
etcd_pid=
cleanup() {
  if [ -n "$etcd_pid" ]; then
    kill "$etcd_pid" 2>/dev/null || true
    wait "$etcd_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peer=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
endpoint="http://127.0.0.1:$port"
say "starting etcd (the NSDB) on $endpoint, data in $work"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "demo=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 100); do
  curl -fsS "$endpoint/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$endpoint/health" >/dev/null || { echo "etcd did not start; its log:"; cat "$work/etcd.log"; exit 1; }

say "the example topology (examples/*.yaml): two bridges, a router, a load balancer, an ACL"
for f in examples/*.yaml; do printf '  %s\n' "$f"; done

say "validating and translating it into NSDB, as the operator's controllers do"
"$bin" translate --etcd-endpoints "$endpoint" examples/

say "translating it again: the operator is idempotent, so nothing changes"
"$bin" translate --etcd-endpoints "$endpoint" examples/

say "what NSDB now holds"
"$bin" nsdb-dump --etcd-endpoints "$endpoint"

say "an invalid object, or one setting a field not supported yet, is refused with the field named, and the rest is untouched"
for f in examples/invalid/*.yaml; do
  printf '\n  %s:\n' "$f"
  "$bin" translate --etcd-endpoints "$endpoint" --dry-run examples/ "$f" 2>&1 | grep -v ': valid, ' | sed 's/^/    /' || true
done

say "building weft-agent, weft-cni and the three-host demo"
cargo build --quiet --locked -p weft-agent --bin weft-agent -p weft-cni --bin weft-cni
demo_bin=$(cargo test --quiet --locked -p weft-agent --test kernel_demo --no-run --message-format=json 2>/dev/null |
  grep -F '"kind":["test"]' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$demo_bin" ] || { echo "demo: the kernel_demo test binary was not built"; exit 1; }
export WEFT_AGENT_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/weft-agent"
case $WEFT_AGENT_BIN in /*) ;; *) WEFT_AGENT_BIN=$PWD/$WEFT_AGENT_BIN ;; esac
export WEFT_CNI_BIN="${WEFT_AGENT_BIN%/*}/weft-cni"
# Pods are attached as a container runtime attaches them: libcni's cnitool runs weft-cni.
WEFT_CNITOOL=$(e2e/tools.sh cnitool | sed -n 's/^cnitool=//p')
export WEFT_CNITOOL

say "three hosts in a kernel guest: etcd, a weft-agent per host, examples/ translated, pods of namespaces blue and green added through cnitool and weft-cni"
echo "  (the guest boots Debian's kernel under QEMU; the first run downloads it, later runs take a few minutes)"
e2e/vm.sh "$demo_bin" --ignored --nocapture --test-threads=1 examples_reachability_matrix 2>&1 |
  grep -v -E '^(running [0-9]+ tests?|test result:)' || {
  echo "demo: the three-host run failed (see above)"; exit 1; }

say "done"
