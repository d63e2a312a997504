#!/usr/bin/env bash
# The Weft demo. First the operator on a real Kubernetes control plane: etcd 3.6 and
# kube-apiserver on loopback (e2e/controlplane.sh), a private etcd as the network state database
# (NSDB), the CRDs applied with kubectl, `weft-operator run` reconciling `kubectl apply -f
# examples/` into NSDB records until every object is Ready, what NSDB then holds, and each file
# of examples/invalid/ refused through the API server. Then the same topology running: three
# hosts in a QEMU guest with Debian's kernel (its OVS datapath), one weft-agent per host, four
# pods attached through weft-cni by libcni's cnitool, and the reachability matrix between them.
# Last, examples/kubernetes/: Kubernetes objects only (a namespace, pods, a Service and a
# NetworkPolicy) applied with kubectl, served by the operator and agents in the guest.
# Whatever way it ends, it leaves no process and no temporary directory behind.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
indent() { sed 's/^/    /'; }

# Bounds on the waits of the first part.
READY_TIMEOUT=180s  # examples/ all Ready=True
REFUSE_TIMEOUT=60s  # an admitted invalid object Ready=False
DELETE_TIMEOUT=60s  # a delete through the operator's finalizer

say "building weft-operator"
cargo build --quiet --locked -p weft-operator
bin="${CARGO_TARGET_DIR:-target}/debug/weft-operator"

# kubectl v1.35, built by e2e/tools.sh like the API server it talks to (`make demo` builds both
# first; a cold build takes minutes).
KUBECTL=$(e2e/tools.sh kube-apiserver kubectl etcd | sed -n 's/^kubectl=//p')
[ -x "$KUBECTL" ] || { echo "demo: e2e/tools.sh gave no kubectl"; exit 1; }

work=$(mktemp -d /tmp/weft-demo.XXXXXX)
etcd_pid=
operator_pid=
kubeconfig=
kubectl() { "$KUBECTL" --kubeconfig "$kubeconfig" "$@"; }

# stop PID: SIGTERM, then SIGKILL after 10 s; reaps it.
stop() {
  kill "$1" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# Stops the first part's processes (the operator, the control plane, NSDB's etcd); idempotent.
teardown() {
  if [ -n "$operator_pid" ]; then stop "$operator_pid"; operator_pid=; fi
  e2e/controlplane.sh down "$work/cp" 2>/dev/null || true
  if [ -n "$etcd_pid" ]; then stop "$etcd_pid"; etcd_pid=; fi
}
cleanup() {
  teardown
  rm -rf "$work"
}
trap cleanup EXIT
# A signal ends the script through the EXIT trap (bash runs none when killed by SIGTERM).
trap 'exit 130' INT
trap 'exit 143' TERM HUP

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# operator_log: the end of the operator's log, after a failure.
operator_log() {
  if [ -n "$operator_pid" ] && ! kill -0 "$operator_pid" 2>/dev/null; then
    echo "  weft-operator has exited; the end of its log:"
  else
    echo "  the end of weft-operator's log:"
  fi
  tail -n 40 "$work/operator.log" 2>/dev/null | indent
}

port=$(free_port)
peer=$(free_port)
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

say "starting a Kubernetes control plane: etcd 3.6 and kube-apiserver on loopback (e2e/controlplane.sh)"
kubeconfig=$(e2e/controlplane.sh up "$work/cp" 2>"$work/controlplane.log") || {
  echo "demo: the control plane did not start:"; indent <"$work/controlplane.log"; exit 1; }
sed 's/^e2e\/controlplane.sh: /  /' "$work/controlplane.log"
echo "  kubeconfig: $kubeconfig"

say "kubectl apply -f crds/: the four kinds, with their schemas"
kubectl apply -f crds/ | indent
kubectl wait --for=condition=Established crd --all --timeout=60s | indent
# Established comes before discovery serves the kinds, which kubectl apply maps through.
for _ in $(seq 120); do
  kubectl get virtualbridges.weft.dev,virtualrouters.weft.dev,virtualloadbalancers.weft.dev,accesscontrollists.weft.dev \
    -o name >/dev/null 2>&1 && break
  sleep 0.5
done
# The namespace of the operator's leader Lease.
kubectl create namespace weft-system | indent

mport=$(free_port)
say "starting weft-operator run (kubeconfig above, NSDB at $endpoint, /metrics /healthz /readyz on 127.0.0.1:$mport)"
KUBECONFIG=$kubeconfig RUST_LOG=info NO_COLOR=1 \
  "$bin" run --etcd-endpoints "$endpoint" --metrics-addr "127.0.0.1:$mport" --identity demo \
  </dev/null >"$work/operator.log" 2>&1 &
operator_pid=$!
for _ in $(seq 300); do
  kill -0 "$operator_pid" 2>/dev/null || break
  curl -fsS "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$mport/healthz" >/dev/null 2>&1 || {
  echo "demo: weft-operator did not answer /healthz within 30 s"; operator_log; exit 1; }
echo "  pid $operator_pid, /healthz ok"

say "the example topology (examples/*.yaml): two bridges, a router, a load balancer, an ACL"
kubectl apply -f examples/ | indent

say "waiting until the operator has programmed each object into NSDB (Ready=True, at most $READY_TIMEOUT)"
if ! kubectl wait --for=condition=Ready vbr,vrt,vlb,acl --all --timeout="$READY_TIMEOUT" 2>&1 | indent; then
  echo "demo: the objects of examples/ were not all Ready=True within $READY_TIMEOUT:"
  kubectl get vbr,vrt,vlb,acl -o custom-columns='OBJECT:.kind,NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,REASON:.status.conditions[?(@.type=="Ready")].reason,MESSAGE:.status.conditions[?(@.type=="Ready")].message' 2>&1 | indent
  operator_log
  exit 1
fi

say "kubectl get vbr,vrt,vlb,acl"
kubectl get vbr,vrt,vlb,acl | indent

say "kubectl get vbr,vlb -o wide (the columns of lower priority)"
kubectl get vbr,vlb -o wide | indent

say "what NSDB now holds (weft-operator nsdb-dump)"
"$bin" nsdb-dump --etcd-endpoints "$endpoint"

say "an invalid object, or one setting a field not supported yet, is refused with the field named, and the rest is untouched"
echo "  (the API server refuses what the CRD's schema and rules catch; the operator refuses the rest with Ready=False)"
for f in examples/invalid/*.yaml; do
  object=$(sed -n 's/^# Object: //p' "$f")   # "Kind name"
  field=$(sed -n 's/^# Field: //p' "$f")
  printf '\n  %s (%s, %s):\n' "$f" "$object" "$field"
  if out=$(kubectl apply -f "$f" 2>&1); then
    res="${object%% *}/${object#* }"
    res=${res,,}
    if ! kubectl wait --for=condition=Ready=False "$res" --timeout="$REFUSE_TIMEOUT" >/dev/null 2>&1; then
      echo "demo: kubectl apply admitted $f, but $object did not get Ready=False within $REFUSE_TIMEOUT; its status:"
      kubectl get "$res" -o jsonpath='{.status}' 2>&1 | indent
      echo
      operator_log
      exit 1
    fi
    echo "    admitted by the API server, then refused by the operator:"
    kubectl get "$res" -o jsonpath='{range .status.conditions[?(@.type=="Ready")]}Ready={.status} reason={.reason}: {.message}{"\n"}{end}' | indent | indent
  else
    echo "    kubectl apply failed:"
    printf '%s\n' "$out" | indent | indent
  fi
  # Objects of the file that were admitted (all of it, or the valid ones beside a refused one).
  if ! out=$(kubectl delete -f "$f" --ignore-not-found --wait --timeout="$DELETE_TIMEOUT" 2>&1); then
    echo "demo: kubectl delete -f $f failed:"
    printf '%s\n' "$out" | indent
    operator_log
    exit 1
  fi
done

say "examples/ is untouched: every object still Ready=True"
kubectl get vbr,vrt,vlb,acl -o custom-columns='OBJECT:.kind,NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,REASON:.status.conditions[?(@.type=="Ready")].reason' | indent
kubectl wait --for=condition=Ready vbr,vrt,vlb,acl --all --timeout=10s >/dev/null

say "stopping weft-operator, the control plane and NSDB"
teardown

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

say "the Kubernetes-native example (examples/kubernetes/shop.yaml) in a kernel guest: a namespace, web pods, a Service and a NetworkPolicy applied with kubectl to a real API server; the operator and three agents in the guest; the pods attached through cnitool and weft-cni"
e2e/kernel-tests.sh kuryr_shop_example --nocapture 2>&1 |
  grep -v -E '^(running [0-9]+ tests?|test result:|==> |$)' || {
  echo "demo: the Kubernetes-native example failed (see above)"; exit 1; }

say "done"
