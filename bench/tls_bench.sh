#!/usr/bin/env bash
# tls_bench.sh: what TLS costs, in ONE run: the same disk served over TCP 127.0.0.1 plain and
# with --tls-certs (GnuTLS records in user space on the ring thread; no kernel TLS here), read
# by fio's nbd engine (libnbd).
#
# Workloads (one line each, db_bench style):
#   sr1m-qd32   1 MiB sequential read, QD32, 1 connection
#   rr4k-qd32   4k random read, QD32, 1 connection
#
# Reported per target and workload: MB/s, IOPS, and the server's CPU seconds per GiB moved
# (utime+stime from /proc/PID/stat before and after); then the TLS/plain ratios. The disk is
# one empty strata layer over a raw base of random data (page cache warm: the transport is
# what is compared, not the storage). libnbd finds the CA in $HOME/.pki/libnbd (fio's nbd
# engine does not allow the tls-certificates= URI parameter), so HOME points into $WORK.
#
# Environment:
#   STRATA=path   strata binary (default: <repo>/build-bench/cli/strata, then build/, PATH)
#   SIZE=1G       base size          RUNTIME=10   seconds per run
#   WORK_PARENT=/var/tmp            where the temporary data directory goes (deleted at exit)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
source "$here/lib.sh"

SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
require_tools tls_bench.sh fio certtool nbdinfo jq
find_strata
[[ -n $STRATA ]] || { echo "tls_bench.sh: no strata binary (build it, or set STRATA)" >&2; exit 2; }
STRATA=$(realpath "$STRATA")

WORK=$(mktemp -d "${WORK_PARENT:-/var/tmp}/strata-tls-bench-XXXXXX")
STARTED_PIDS=()
trap stop_started_and_clean EXIT
cd "$WORK"

# Certificates: a CA, and a server certificate for 127.0.0.1.
mkdir -p pki home/.pki/libnbd
{
  printf 'cn = bench CA\nca\ncert_signing_key\nexpiration_days = 2\n' >ca.info
  printf 'cn = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >server.info
  certtool -p --outfile ca-key.pem
  certtool -s --load-privkey ca-key.pem --template ca.info --outfile pki/ca-cert.pem
  certtool -p --outfile pki/server-key.pem
  certtool -c --load-privkey pki/server-key.pem --load-ca-certificate pki/ca-cert.pem \
    --load-ca-privkey ca-key.pem --template server.info --outfile pki/server-cert.pem
} >certs.log 2>&1
cp pki/ca-cert.pem home/.pki/libnbd/ca-cert.pem

head -c "$(numfmt --from=iec "$SIZE")" /dev/urandom >base.raw
"$STRATA" create -b base.raw -F raw disk.strata >/dev/null
cat base.raw >/dev/null  # warm the page cache

declare -A MBS IOPS CPU
run_target() {
  local name=$1; shift
  "$STRATA" serve --listen 127.0.0.1:0 --pid-file serve.pid --log-file "serve-$name.log" \
    --no-control "$@" disk.strata >serve.out
  local pid; pid=$(cat serve.pid); STARTED_PIDS+=("$pid")
  local port; port=$(sed -n 's|^serving .* at nbds\{0,1\}://127.0.0.1:\([0-9]*\)/.*|\1|p' serve.out)
  local scheme=nbd; [[ $name == tls ]] && scheme=nbds
  local uri="$scheme://127.0.0.1:$port/"
  local wl rw bs before after
  for wl in sr1m-qd32 rr4k-qd32; do
    case $wl in
      sr1m-qd32) rw=read; bs=1M ;;
      rr4k-qd32) rw=randread; bs=4k ;;
    esac
    before=$(cpu_ticks "$pid")
    HOME=$WORK/home fio --name="$name-$wl" --ioengine=nbd --uri="$uri" --rw=$rw --bs=$bs \
      --iodepth=32 --size="$SIZE" --runtime="$RUNTIME" --time_based --output-format=json \
      --output="fio-$name-$wl.json" >/dev/null
    after=$(cpu_ticks "$pid")
    local bytes; bytes=$(jq '.jobs[0].read.io_bytes' "fio-$name-$wl.json")
    MBS[$name,$wl]=$(jq '.jobs[0].read.bw_bytes / 1e6 | floor' "fio-$name-$wl.json")
    IOPS[$name,$wl]=$(jq '.jobs[0].read.iops | floor' "fio-$name-$wl.json")
    CPU[$name,$wl]=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v b="$bytes" \
      'BEGIN { printf "%.2f", b ? t / hz / (b / 2^30) : 0 }')
  done
  kill "$pid"; for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

run_target plain
run_target tls --tls-certs pki
grep -m1 "TLS established" serve-tls.log | sed 's/.*TLS established: /# TLS session: /'

echo "# tls_bench.sh: SIZE=$SIZE RUNTIME=$RUNTIME, $(nproc) CPUs, $(uname -r), $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# strata serve --listen 127.0.0.1:0 [--tls-certs pki] disk.strata; HOME=\$WORK/home fio --ioengine=nbd --uri=nbd[s]://127.0.0.1:PORT/ --rw=read|randread --bs=1M|4k --iodepth=32 --size=$SIZE --runtime=$RUNTIME --time_based"
echo "| workload | plain MB/s | TLS MB/s | TLS/plain | plain IOPS | TLS IOPS | server CPU s/GiB plain | TLS |"
echo "|---|---|---|---|---|---|---|---|"
for wl in sr1m-qd32 rr4k-qd32; do
  ratio=$(awk -v a="${MBS[tls,$wl]}" -v b="${MBS[plain,$wl]}" 'BEGIN { printf "%.2f", b ? a / b : 0 }')
  echo "| $wl | ${MBS[plain,$wl]} | ${MBS[tls,$wl]} | $ratio | ${IOPS[plain,$wl]} | ${IOPS[tls,$wl]} | ${CPU[plain,$wl]} | ${CPU[tls,$wl]} |"
done
