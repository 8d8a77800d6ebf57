#!/usr/bin/env bash
# `make test-arm64`: the device runtime on an emulated Debian 12 arm64 (Raspberry Pi OS Bookworm
# 64-bit is Debian 12 arm64, Python 3.11). As root: qemu-aarch64 through binfmt_misc, a
# debootstrapped arm64 root (cached as a tarball under $CARBONCP_ARM64_CACHE), the runtime extra
# installed from this checkout in a venv inside it (and tflite-runtime 2.14 + numpy<2 in a
# second one), then, inside the root:
#   - tests/runtime/test_litert_runner.py and test_no_torch.py on the tiny bundle built on amd64
#     (both interpreters);
#   - tests/arm64: every head equals amd64's within 1e-5, the table policy decides as on amd64,
#     and `carboncp run` offloads to an amd64 `carboncp serve` with carbon from a host Mosquitto.
# Ends with one line naming what passed. Where it cannot run (not root, no binfmt_misc, no
# apt for debootstrap/qemu) it prints why in one line and exits 0; under CI=true it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
here=$repo/tools/arm64
py=${CARBONCP_HOST_PYTHON:-$repo/.venv/bin/python}
cache=${CARBONCP_ARM64_CACHE:-$HOME/.cache/carboncp/arm64}
mirror=${CARBONCP_ARM64_MIRROR:-http://deb.debian.org/debian}
include=python3,python3-venv,ca-certificates
base_tar=$cache/debian12-arm64-minbase.tar.gz
t0=$SECONDS

in_ci() { case "$(echo "${CI:-}" | tr -d ' ' | tr '[:upper:]' '[:lower:]')" in true | 1) return 0 ;; esac; return 1; }
log() { echo "test-arm64: [$((SECONDS - t0)) s] $*" >&2; }
cannot_run() {
  if in_ci; then
    echo "test-arm64: FAILED: $1 (CI must run it: fix the CI machine)" >&2
    exit 1
  fi
  echo "test-arm64: not run: $1"
  exit 0
}

preflight() {
  [ "$(uname -s)" = Linux ] || cannot_run "needs Linux (chroot, binfmt_misc), this is $(uname -s)"
  arch=$(uname -m)
  case $arch in x86_64 | aarch64) ;; *) cannot_run "runs on x86_64 (emulated) or aarch64 hosts, this is $arch" ;; esac
  [ "$(id -u)" = 0 ] || cannot_run "needs root (chroot, mounts, binfmt_misc): run 'sudo make test-arm64'"
  [ -x "$py" ] || cannot_run "no host venv at $py (run 'make .venv/bin/.installed' or 'make test')"
  local need=()
  command -v unshare >/dev/null || need+=(util-linux)
  [ -s "$base_tar" ] || command -v debootstrap >/dev/null || need+=(debootstrap)
  [ "$arch" = aarch64 ] || [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
  if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cannot_run "needs ${need[*]} and there is no apt-get to install them"
    log "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get install -y -qq "${need[@]}" || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }; } >/dev/null ||
      cannot_run "apt-get install ${need[*]} failed"
  fi
  [ "$arch" = aarch64 ] || register_qemu
}

# qemu-aarch64 for arm64 ELF files; F (fix binary): the kernel opens the interpreter now, so
# the root needs no copy of it. The magic and mask are Debian's (/usr/lib/binfmt.d).
register_qemu() {
  local bm=/proc/sys/fs/binfmt_misc
  if [ ! -e $bm/register ]; then
    mount -t binfmt_misc binfmt_misc $bm 2>/dev/null ||
      cannot_run "cannot mount binfmt_misc (a container without the privilege?)"
  fi
  if [ ! -e $bm/qemu-aarch64 ]; then
    local magic='\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    # (a concurrent run may have registered it in the meantime)
    echo ":qemu-aarch64:M::$magic:$mask:/usr/bin/qemu-aarch64-static:F" >$bm/register 2>/dev/null ||
      [ -e $bm/qemu-aarch64 ] || cannot_run "cannot register qemu-aarch64 with binfmt_misc"
  fi
  grep -qx enabled $bm/qemu-aarch64 || echo 1 >$bm/qemu-aarch64
  # An entry registered elsewhere without F needs its interpreter inside the root.
  grep -q '^flags:.*F' $bm/qemu-aarch64 || qemu_interp=$(sed -n 's/^interpreter //p' $bm/qemu-aarch64)
}

copy_interp() {
  [ -z "${qemu_interp:-}" ] || { mkdir -p "$1$(dirname "$qemu_interp")" && cp -L "$qemu_interp" "$1$qemu_interp"; }
}

# The base root: debootstrap's two stages (4-7 min on 2 cores), kept as a 68 MB tarball for later runs.
bootstrap() {
  local b=$cache/bootstrap.$$
  rm -rf "$b"
  log "no cached root: debootstrap Debian 12 arm64 (minbase + $include)"
  if ! debootstrap --arch=arm64 --foreign --variant=minbase --include=$include \
    bookworm "$b" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    ! copy_interp "$b" ||
    ! unshare --mount --propagation private chroot "$b" /debootstrap/debootstrap --second-stage \
      >>"$cache/debootstrap.log" 2>&1; then
    tail -20 "$cache/debootstrap.log" >&2
    tail -20 "$b/debootstrap/debootstrap.log" >&2 || true
    rm -rf "$b"
    echo "test-arm64: FAILED: debootstrap (log above)" >&2
    exit 1
  fi
  rm -rf "$b"/var/cache/apt/archives/*.deb "$b"/var/lib/apt/lists/*
  tar -C "$b" -czf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
  rm -rf "$b"
}

# A fresh root per run (a few seconds from the tarball); the checkout's files copied to /src
# (pip builds in-tree, so a bind mount would leave build/ and egg-info in the working tree).
make_root() {
  mkdir -p "$cache"
  for d in "$cache"/run.*; do # runs that died: their pid is gone
    [ -d "$d" ] && ! kill -0 "${d##*.}" 2>/dev/null && rm -rf "$d"
  done
  exec 9>"$cache/lock"
  flock 9 # one bootstrap at a time
  [ -s "$base_tar" ] || bootstrap
  flock -u 9
  work=$cache/run.$$
  root=$work/root
  mkdir -p "$root"
  tar -C "$root" -xzf "$base_tar"
  copy_interp "$root"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # The root trusts what the host trusts (a network behind a TLS-inspecting proxy has its CA
  # only in the host's bundle).
  [ -s /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  mkdir -p "$root/src" "$root/share"
  git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$root/src" -xf -
}

inroot() { CARBONCP_ARM64_PIP_CACHE=$cache/pip bash "$here/chroot.sh" "$root" "$@"; }

make_venvs() {
  inroot python3 -m venv /opt/litert
  inroot /opt/litert/bin/pip install -q '/src[runtime]' pytest pytest-timeout
  inroot python3 -m venv /opt/tflite
  inroot /opt/tflite/bin/pip install -q "tflite-runtime==2.14.0" "numpy<2" pytest pytest-timeout /src
}

# pytest inside the root, from /src, against the shared bundles and references; the tflite venv
# must run on tflite_runtime (test_litert_runner checks it).
pytest_in() {
  local venv=$1
  shift
  local only=()
  [ "$venv" = tflite ] && only=(CARBONCP_REQUIRE_TFLITE_RUNTIME=1)
  inroot /bin/sh -c 'cd /src && exec "$@"' sh env CARBONCP_TEST_BUNDLE=/share/tiny-bundle \
    CARBONCP_ARM64_SHARE=/share "${only[@]}" "/opt/$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
}

# The versions the closing line names, from each venv.
versions_in() {
  inroot "/opt/$1/bin/python" -c 'import importlib.metadata as m, json, os, platform, sys
v = {d: m.version(d) for d in sys.argv[2:]}
v["python"] = platform.python_version()
v["cpu"] = os.environ.get("QEMU_CPU", "native")
json.dump(v, open(sys.argv[1], "w"))' "/share/results/versions-$1.json" "${@:2}"
}

cleanup() {
  local rc=$?
  [ -n "${services_pid:-}" ] && kill "$services_pid" 2>/dev/null && wait "$services_pid" 2>/dev/null
  # The root's mounts lived in chroot.sh's own mount namespace: here it is plain files.
  [ -n "${work:-}" ] && [ -z "${CARBONCP_ARM64_KEEP:-}" ] && rm -rf "$work"
  [ $rc = 0 ] || echo "test-arm64: FAILED (exit $rc; see above)" >&2
}

main() {
  preflight
  trap cleanup EXIT
  trap "exit 143" TERM INT
  make_root
  log "arm64 root ready ($(du -sh "$root" | cut -f1))"
  # The exporter is chatty (torch, TensorFlow): its log is shown only when it fails.
  PYTHONPATH=$repo "$py" "$here/host.py" prepare "$root/share" >"$work/prepare.log" 2>&1 ||
    { tail -30 "$work/prepare.log" >&2 && return 1; }
  PYTHONPATH=$repo "$py" "$here/host.py" serve "$root/share" >"$work/serve.log" 2>&1 &
  services_pid=$!
  log "amd64 references written; serve + mosquitto starting (pid $services_pid)"
  make_venvs
  log "venvs installed in the root"
  local runner_tests=(tests/runtime/test_litert_runner.py tests/runtime/test_no_torch.py)
  local heads=tests/arm64/test_heads_and_decisions.py
  pytest_in litert "${runner_tests[@]}" "$heads"
  log "ai-edge-litert venv: runner + heads + decisions passed"
  pytest_in tflite "${runner_tests[@]}" "$heads"
  log "tflite-runtime venv: runner + heads + decisions passed"
  # A Jetson Orin's Cortex-A78AE has dotprod and fp16 arithmetic, which a Pi 4's A72 lacks, so
  # XNNPACK picks other kernels there: the heads again on an emulated Cortex-A76 (ARMv8.2).
  CARBONCP_ARM64_CPU=cortex-a76 pytest_in litert "$heads::test_every_head_equals_amd64"
  log "heads on an emulated Cortex-A76 passed"
  for _ in $(seq 600); do [ -s "$root/share/services.json" ] && break; sleep 0.2; done
  [ -s "$root/share/services.json" ] || { tail -30 "$work/serve.log" >&2 && return 1; }
  pytest_in litert tests/arm64/test_run_offload.py
  versions_in litert ai-edge-litert numpy
  versions_in tflite tflite-runtime numpy
  log "done in $((SECONDS - t0)) s; cache $(du -sh "$cache" --exclude="run.*" | cut -f1)"
  PYTHONPATH=$repo "$py" "$here/host.py" summary "$root/share"
}

# One line, so bash has read it whole before running: an edit of this file mid-run is harmless.
main "$@"; exit
