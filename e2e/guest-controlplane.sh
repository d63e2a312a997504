# Sourced by e2e/kernel-tests.sh and e2e/kernel-bench.sh, after they made "$work":
# a real control plane (etcd + kube-apiserver, e2e/controlplane.sh) on the host's loopback,
# which the guest reaches at 10.0.2.2 through its user-network NIC (vm.sh WEFT_VM_HOSTNET=1).
# The Kuryr scenarios apply Namespaces, Pods, Services and NetworkPolicies to it, and the
# operator and agents in the guest watch it. Exports WEFT_KUBECONFIG, WEFT_KUBECTL and
# WEFT_VM_HOSTNET, and stops the control plane (and removes "$work") on exit.
"$HERE/controlplane.sh" up "$work/cp" >/dev/null
trap '"$HERE/controlplane.sh" down "$work/cp" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
WEFT_KUBECONFIG=$work/cp/kubeconfig
WEFT_KUBECTL=$("$HERE/tools.sh" kubectl | sed -n 's/^kubectl=//p')
[ -x "$WEFT_KUBECTL" ] || { echo "$(basename "$0"): e2e/tools.sh gave no kubectl" >&2; exit 1; }
export WEFT_KUBECONFIG WEFT_KUBECTL WEFT_VM_HOSTNET=1
