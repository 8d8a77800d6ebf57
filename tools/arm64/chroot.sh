#!/usr/bin/env bash
# Run one command inside the arm64 root: tools/arm64/chroot.sh ROOT CMD [ARG...]
# It re-runs itself under `unshare --mount`, so every mount below lives in a private mount
# namespace and disappears with it: nothing is left mounted on the host, even after a crash.
set -euo pipefail
root=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
if [ "${_CARBONCP_ARM64_NS:-}" != 1 ]; then
  _CARBONCP_ARM64_NS=1 exec unshare --mount --propagation private bash "$0" "$root" "$@"
fi

mount -t proc proc "$root/proc"
# QEMU user mode shows the host's x86 /proc/cpuinfo; ai-edge-litert's XNNPACK then segfaults in
# allocate_tensors. A real Pi's text (one block per host CPU, matching /sys) avoids it.
cpuinfo="$root/tmp/cpuinfo-aarch64"
bash "$here/cpuinfo.sh" >"$cpuinfo"
mount --bind "$cpuinfo" "$root/proc/cpuinfo"
# Without /sys, XNNPACK finds no CPU topology and is silently skipped (test_litert_runner's
# delegation test would fail).
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null || true
# pip's wheel cache outlives the root, so a warm run downloads nothing.
if [ -n "${CARBONCP_ARM64_PIP_CACHE:-}" ]; then
  mkdir -p "$CARBONCP_ARM64_PIP_CACHE" "$root/root/.cache/pip"
  mount --bind "$CARBONCP_ARM64_PIP_CACHE" "$root/root/.cache/pip"
fi
# QEMU_CPU: qemu-user emulates its "max" CPU by default (SVE, dotprod, fp16 ...), so XNNPACK would
# pick kernels a Pi 4 cannot run; a Cortex-A72 offers what the Pi's CPU offers.
exec chroot "$root" /usr/bin/env -i QEMU_CPU="${CARBONCP_ARM64_CPU:-cortex-a72}" \
  HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  CI="${CI:-}" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
  PIP_DEFAULT_TIMEOUT=180 \
  ${http_proxy:+http_proxy=$http_proxy} ${https_proxy:+https_proxy=$https_proxy} \
  ${no_proxy:+no_proxy=$no_proxy} \
  "$@"
