#!/usr/bin/env bash
# Prints a Raspberry Pi 4 (Cortex-A72) /proc/cpuinfo with one block per host CPU, so the CPU
# count agrees with /sys/devices/system/cpu, which the chroot shares with the host.
set -euo pipefail
n=$(nproc --all)
for ((i = 0; i < n; i++)); do
  printf 'processor\t: %d\n' "$i"
  printf 'BogoMIPS\t: 108.00\n'
  printf 'Features\t: fp asimd evtstrm crc32 cpuid\n'
  printf 'CPU implementer\t: 0x41\n'
  printf 'CPU architecture: 8\n'
  printf 'CPU variant\t: 0x0\n'
  printf 'CPU part\t: 0xd08\n'
  printf 'CPU revision\t: 3\n\n'
done
printf 'Hardware\t: BCM2835\n'
printf 'Revision\t: c03111\n'
printf 'Model\t\t: Raspberry Pi 4 Model B Rev 1.1\n'
