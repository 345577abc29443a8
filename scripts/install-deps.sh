#!/usr/bin/env bash
# Installs everything strata needs to build, test and benchmark on Debian 12 (bookworm).
# Usage: scripts/install-deps.sh [--with-guest]
#   --with-guest also installs QEMU, the kernel and busybox of the guest tests (ctest -L guest).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=(
  # build
  g++ cmake make pkg-config git ca-certificates
  # the fuzz build (tests/fuzz/): clang, and libFuzzer with clang's sanitizer runtimes
  clang libclang-rt-14-dev
  # libraries (Debian 12: liburing 2.3, libnbd 1.14, Abseil 20220623)
  liburing-dev libnbd-dev libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libgnutls28-dev
  # certtool and psktool: the TLS tests make their certificates and keys
  gnutls-bin
  # real NBD clients and peers for interop tests and benchmarks
  libnbd-bin python3-libnbd qemu-utils nbdkit fio nbd-client util-linux jq diffutils
  # qemu-storage-daemon (strata bench: blockdev-snapshot-sync and block-commit beside strata)
  qemu-system-common
  # strata bench's charts (PNG; without it the bench still runs, and says the charts are skipped)
  gnuplot-nox
  # fault injection into the real binary (interrupted merges, failed fdatasync)
  strace
  # the man page's rendering check (tests/install_and_completion.sh)
  groff-base man-db
)
if [ "${1:-}" = "--with-guest" ]; then
  pkgs+=(qemu-system-x86 linux-image-cloud-amd64 busybox-static cpio e2fsprogs)
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
