#!/usr/bin/env bash
# e2e/vm.sh COMMAND [ARG...]
#
# Runs COMMAND inside a throwaway QEMU guest that boots Debian's own amd64 kernel (which ships
# openvswitch.ko, vxlan.ko and geneve.ko), and exits with COMMAND's exit status.
#
# The guest's root filesystem is the host's / shared read-only over virtio-9p with a tmpfs
# overlay on top, so any host binary (a cargo test binary included) runs unchanged inside.
# The working directory is kept, and PATH, HOME, RUST_*, CARGO_*, WEFT_* and the variables named
# in WEFT_VM_PASS_ENV (space separated) are passed in. Standard input is not.
#
# First use installs what it needs (Debian packages, the kernel .deb unpacked with its modules,
# the uncompressed vmlinux, a busybox initramfs) into WEFT_VM_CACHE
# (default ~/.cache/weft/kernel-vm); later runs reuse it and only boot.
#
# Environment:
#   WEFT_VM_CACHE    cache directory (default ~/.cache/weft/kernel-vm)
#   WEFT_VM_MEM      guest memory in MiB (default 1024)
#   WEFT_VM_SMP      guest CPUs (default 2)
#   WEFT_VM_TIMEOUT  seconds before the guest is killed (default 1800)
#   WEFT_VM_VERBOSE  1 shows the whole console (kernel messages included)
#   WEFT_VM_KEEP     1 keeps the per-run directory (command, console log, exit status)
#   WEFT_VM_HOSTNET  1 gives the guest a virtio NIC on QEMU's user network, through which the
#                    guest reaches the host's loopback services at 10.0.2.2 (e.g. a control
#                    plane started on the host); COMMAND brings it up (e2e/kernel-tests.sh does)
#
# The guest runs under TCG (software emulation): KVM is not assumed to work.
set -euo pipefail

die() { printf 'e2e/vm.sh: %s\n' "$*" >&2; exit 125; }
say() { printf 'e2e/vm.sh: %s\n' "$*" >&2; }

[ $# -ge 1 ] || die "usage: e2e/vm.sh COMMAND [ARG...]"
[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and QEMU shares / over 9p)"

CACHE=${WEFT_VM_CACHE:-${HOME:-/root}/.cache/weft/kernel-vm}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)

# Bump when the guest layout below changes, so stale caches are rebuilt.
LAYOUT=3

# ---------------------------------------------------------------------------------------------
# One-time setup, under a lock so parallel first runs do not race.
# ---------------------------------------------------------------------------------------------
setup() {
  local want=(qemu-system-x86_64:qemu-system-x86 ovs-dpctl:openvswitch-switch ip:iproute2
    ping:iputils-ping depmod:kmod xz:xz-utils tcpdump:tcpdump cpio:cpio flock:util-linux
    dpkg-deb:dpkg)
  local missing=() pair
  for pair in "${want[@]}"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx switch_root || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    # Debian's policy-rc.d keeps openvswitch-switch's services from starting on the host.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi

  local pkg kver
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [ -z "$pkg" ]; then
    apt-get update -qq || die "apt-get update failed"
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  fi
  [ -n "$pkg" ] || die "cannot find Debian's linux-image-amd64 dependency (is apt configured?)"
  kver=${pkg#linux-image-}

  if [ ! -f "$CACHE/kernel/boot/vmlinuz-$kver" ]; then
    say "downloading $pkg"
    rm -rf "$CACHE/dl" "$CACHE/kernel.new"
    mkdir -p "$CACHE/dl" && chmod 777 "$CACHE/dl"  # apt downloads as the _apt user
    (cd "$CACHE/dl" && apt-get download "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    dpkg-deb -x "$CACHE"/dl/"${pkg}"_*.deb "$CACHE/kernel.new" || die "cannot unpack $pkg"
    rm -rf "$CACHE/kernel" "$CACHE/dl"
    mv "$CACHE/kernel.new" "$CACHE/kernel"
  fi
  local moddir=$CACHE/kernel/lib/modules/$kver
  # The .deb ships no modules.dep: without it neither modprobe nor the kernel's own
  # request_module (genetlink family lookup loads openvswitch by itself) can find anything.
  [ -f "$moddir/modules.dep" ] || depmod -b "$CACHE/kernel" "$kver" || die "depmod failed"

  # An uncompressed ELF vmlinux lets QEMU boot through PVH, skipping the BIOS and the xz
  # decompression (about 2.5 s under TCG). Fall back to the bzImage when extraction fails.
  if [ ! -s "$CACHE/vmlinux-$kver" ]; then
    local off
    off=$(grep -abo "$(printf '\3757zXZ')" "$CACHE/kernel/boot/vmlinuz-$kver" | head -1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
      tail -c +$((off + 1)) "$CACHE/kernel/boot/vmlinuz-$kver" | xz -dc >"$CACHE/vmlinux-$kver.tmp" 2>/dev/null || true
      if head -c 4 "$CACHE/vmlinux-$kver.tmp" | grep -q ELF; then
        mv "$CACHE/vmlinux-$kver.tmp" "$CACHE/vmlinux-$kver"
      else
        rm -f "$CACHE/vmlinux-$kver.tmp"
      fi
    fi
  fi

  build_initramfs "$kver"
  write_guest_init
  echo "$kver" >"$CACHE/KVER"
  echo "$LAYOUT" >"$CACHE/LAYOUT"
}

# A tiny initramfs: busybox plus the modules needed to mount the host root over virtio-9p and
# put a tmpfs overlay on top, then switch_root into it and run the guest init script.
build_initramfs() {
  local kver=$1 src=$CACHE/initramfs-src m
  local mods=$CACHE/kernel/lib/modules/$kver/kernel
  rm -rf "$src"
  mkdir -p "$src/bin" "$src/lib/mod" "$src/proc" "$src/dev" "$src/lower" "$src/upper" "$src/newroot"
  cp /bin/busybox "$src/bin/busybox"
  for m in sh mount umount insmod mkdir switch_root cat echo sleep poweroff; do ln -sf busybox "$src/bin/$m"; done
  for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_modern_dev \
    drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache \
    net/9p/9pnet net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
    [ -f "$mods/$m.ko" ] || die "kernel $kver has no $m.ko"
    cp "$mods/$m.ko" "$src/lib/mod/"
  done
  cat >"$src/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay; do
  insmod /lib/mod/$m.ko || echo "weft-initramfs: insmod $m failed"
done
VMINIT=
for a in $(cat /proc/cmdline); do case $a in vminit=*) VMINIT=${a#vminit=};; esac; done
fail() { echo "weft-initramfs: $*"; echo "@@VM-FAIL@@"; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || fail "9p mount of the host root failed"
mount -t tmpfs -o size=50%,mode=755 upper /upper || fail "tmpfs failed"
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || fail "overlay mount failed"
[ -n "$VMINIT" ] && [ -f "/newroot$VMINIT" ] || fail "guest init $VMINIT not found under the host root"
umount /proc; umount /dev
exec switch_root /newroot /bin/sh "$VMINIT"
EOF
  chmod +x "$src/init"
  (cd "$src" && find . | cpio -o -H newc --quiet | gzip -1) >"$CACHE/initramfs.cpio.gz.tmp" ||
    die "building the initramfs failed"
  mv "$CACHE/initramfs.cpio.gz.tmp" "$CACHE/initramfs.cpio.gz"
  rm -rf "$src"
}

# PID 1 inside the guest: mounts the usual pseudo filesystems, makes the kernel's modules
# visible, mounts the per-run share, runs the command and writes its exit status there.
write_guest_init() {
  cat >"$CACHE/guest-init.sh.tmp" <<'EOF'
#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /dev/net
mount -t devpts -o newinstance,ptmxmode=666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /run is a fresh tmpfs (the host's is not meaningful here); /tmp stays on the overlay so
# it is writable and ip-netns can bind-mount under /run/netns.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/openvswitch /var/run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
RUNDIR=; CACHE=
for a in $(cat /proc/cmdline); do
  case $a in vmrundir=*) RUNDIR=${a#vmrundir=};; vmcache=*) CACHE=${a#vmcache=};; esac
done
KVER=$(uname -r)
mkdir -p /lib/modules/$KVER
mount --bind "$CACHE/kernel/lib/modules/$KVER" /lib/modules/$KVER
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmrun "$RUNDIR" || { echo "@@VM-FAIL@@ 9p mount of the run directory failed"; echo o > /proc/sysrq-trigger; }
hostname weft-vm
ip link set lo up
echo "@@VM-BEGIN@@"
bash "$RUNDIR/cmd" </dev/null
rc=$?
echo "@@VM-END rc=$rc@@"
echo $rc > "$RUNDIR/rc.tmp" && mv "$RUNDIR/rc.tmp" "$RUNDIR/rc"
sync
echo o > /proc/sysrq-trigger
sleep 30
EOF
  mv "$CACHE/guest-init.sh.tmp" "$CACHE/guest-init.sh"
}

exec 9>"$CACHE/.lock"
flock 9
if [ "$(cat "$CACHE/LAYOUT" 2>/dev/null)" != "$LAYOUT" ] || [ ! -s "$CACHE/initramfs.cpio.gz" ] ||
  [ ! -f "$CACHE/KVER" ] || [ ! -f "$CACHE/guest-init.sh" ]; then
  say "first use: preparing the guest kernel in $CACHE"
  setup
fi
flock -u 9
KVER=$(cat "$CACHE/KVER")
KERNEL=$CACHE/vmlinux-$KVER
[ -s "$KERNEL" ] || KERNEL=$CACHE/kernel/boot/vmlinuz-$KVER
[ -f "$KERNEL" ] || die "no kernel image in $CACHE (remove $CACHE/LAYOUT to redo the setup)"

# ---------------------------------------------------------------------------------------------
# One run.
# ---------------------------------------------------------------------------------------------
mkdir -p "$CACHE/runs"
RUNDIR=$(mktemp -d "$CACHE/runs/run.XXXXXX")
cleanup() { [ "${WEFT_VM_KEEP:-0}" = 1 ] || rm -rf "$RUNDIR"; }
trap cleanup EXIT

{
  echo "# generated by e2e/vm.sh"
  for v in $(compgen -e); do
    case $v in
      PATH | HOME | USER | LANG | LC_* | TZ | RUST_* | CARGO_* | WEFT_* | TMPDIR) ;;
      *) case " ${WEFT_VM_PASS_ENV:-} " in *" $v "*) ;; *) continue ;; esac ;;
    esac
    case $v in WEFT_VM_*) continue ;; esac
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  printf 'cd %q || exit 126\n' "$PWD"
  printf 'exec'
  printf ' %q' "$@"
  printf '\n'
} >"$RUNDIR/cmd"

ACCEL=tcg,thread=multi
# One awk strips the serial console's CRs, keeps the whole console in console.log and
# prints what COMMAND printed (between the markers; its last line may lack a newline),
# flushing every line so long runs stream (tr would block-buffer into a pipe).
AWK=(awk)
# mawk reads a pipe in large blocks unless told it is interactive.
awk -W version 2>&1 | grep -q mawk && AWK=(awk -W interactive)
filter() {
  "${AWK[@]}" -v logf="$RUNDIR/console.log" -v verbose="${WEFT_VM_VERBOSE:-0}" '
    { sub(/\r+$/, ""); gsub(/\r/, ""); print > logf; fflush(logf) }
    verbose == 1 { print; fflush(); next }
    !on && $0 == "@@VM-BEGIN@@" { on = 1; next }
    on && (i = index($0, "@@VM-END rc=")) { if (i > 1) print substr($0, 1, i - 1); on = 0; fflush(); next }
    on { print; fflush() }'
}
HOSTNET=()
if [ "${WEFT_VM_HOSTNET:-0}" = 1 ]; then
  # QEMU maps the guest's connections to 10.0.2.2 to the host's 127.0.0.1.
  HOSTNET=(-netdev user,id=hostnet -device virtio-net-pci,netdev=hostnet,mac=52:54:00:12:34:56)
fi
set +e
timeout "${WEFT_VM_TIMEOUT:-1800}" qemu-system-x86_64 -nodefaults -no-user-config -accel "$ACCEL" -cpu max \
  -smp "${WEFT_VM_SMP:-2}" -m "${WEFT_VM_MEM:-1024}" -display none -serial stdio -no-reboot \
  -kernel "$KERNEL" -initrd "$CACHE/initramfs.cpio.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 vminit=$CACHE/guest-init.sh vmcache=$CACHE vmrundir=$RUNDIR" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$RUNDIR",mount_tag=vmrun,security_model=none,multidevs=remap \
  "${HOSTNET[@]}" </dev/null 2>&1 | filter
qemu_rc=${PIPESTATUS[0]}
set -e

if [ ! -f "$RUNDIR/rc" ]; then
  if [ "$qemu_rc" = 124 ]; then
    say "the guest was killed after ${WEFT_VM_TIMEOUT:-1800} s (WEFT_VM_TIMEOUT) before COMMAND finished"
  else
    say "the guest did not boot or did not finish COMMAND (qemu exit status $qemu_rc)"
  fi
  say "last console lines:"
  tail -n 40 "$RUNDIR/console.log" >&2 || true
  exit 125
fi
exit "$(cat "$RUNDIR/rc")"
