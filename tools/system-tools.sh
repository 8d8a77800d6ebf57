#!/usr/bin/env bash
# The system tools the test suite drives for real: mosquitto (+ mosquitto_passwd) for the MQTT
# tests, g++ for the Arduino sketch test, openssl for TLS test certificates. Installs the
# missing ones with apt when it can (root + apt-get); otherwise stops at once with the one
# command to run. `make test` calls this first; CI (.ci/run) calls `make test`.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have mosquitto || missing+=(mosquitto)
have mosquitto_passwd || missing+=(mosquitto)
have g++ || missing+=(g++)
have openssl || missing+=(openssl)
[ ${#missing[@]} -eq 0 ] && exit 0
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system-tools: installing ${pkgs}with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq $pkgs >/dev/null
  exit 0
fi
echo "system-tools: the tests need: ${pkgs}; install them first:" >&2
echo "  sudo apt-get install -y ${pkgs}" >&2
exit 2
