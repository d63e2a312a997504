#!/usr/bin/env bash
# Captures the netlink messages Debian's ovs-dpctl sends for each flow in flows.txt, and the
# kernel's dump of them, as golden data for crates/odp/tests/golden.rs.
#
# Run from the repository root, as root, inside the kernel guest:
#   e2e/vm.sh crates/odp/tests/golden/capture.sh > /tmp/capture.out
#   crates/odp/tests/golden/split.sh /tmp/capture.out   # writes crates/odp/tests/golden/*.txt
#
# Each flow line of flows.txt is "<match> <TAB> <actions>". For each, it prints
#   @@FLOW <n>
#   @@CMD ovs-dpctl add-flow ...
#   <strace line of the OVS_FLOW_CMD_NEW sendmsg, -xx hex escapes>
# and at the end the output of `ovs-dpctl dump-flows` between @@DUMP and @@END.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ovs-dpctl add-dp golden
n=0
while IFS=$'\t' read -r match actions; do
  case $match in '' | '#'*) continue ;; esac
  n=$((n + 1))
  echo "@@FLOW $n"
  echo "@@CMD ovs-dpctl add-flow golden '$match' '$actions'"
  strace -f -xx -s 65535 -e trace=sendmsg -o /tmp/strace.$n ovs-dpctl add-flow golden "$match" "$actions" ||
    echo "@@FAILED"
  # The flow message is the last sendmsg (earlier ones resolve the families and the datapath).
  grep 'sendmsg' /tmp/strace.$n | tail -n 1
done <"$here/flows.txt"
echo "@@DUMP"
ovs-dpctl dump-flows golden
echo "@@END"
# The kernel's replies to the dump, one recvmsg per line.
echo "@@DUMPMSGS"
strace -f -xx -s 65535 -e trace=recvmsg -o /tmp/strace.dump ovs-dpctl dump-flows golden >/dev/null
grep 'recvmsg' /tmp/strace.dump
echo "@@END"
