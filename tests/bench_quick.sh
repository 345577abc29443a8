#!/usr/bin/env bash
# The plumbing of `strata bench --quick` (bench/run.sh), on the smallest sizes: it runs from
# another working directory with relative paths, as bench/README.md tells users; it exits 0;
# it prints progress up to its last step; results.json parses and has every case with numbers;
# report.md has each table; the PNG charts exist when gnuplot is installed, and without
# gnuplot the report is still written and says the charts were skipped. No timing assertions:
# the figures of a tiny run on a shared machine mean nothing.
# Usage: bench_quick.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata bench measures strata itself"
need fio qemu-nbd qemu-img qemu-io qemu-storage-daemon nbdkit nbdinfo filefrag jq
interop_init "$1"
STRATA=$(readlink -f "$STRATA")
mkdir "$WORK/cwd" "$WORK/scratch"
cd "$WORK/cwd"

"$STRATA" bench --quick --size 8M --dir ../scratch --results res >out.txt 2>err.txt \
  || fail "strata bench --quick exited $?: $(tail -20 err.txt)"
[ -z "$(ls ../scratch)" ] || fail "scratch data left behind: $(ls ../scratch)"

# Progress: "[N/TOTAL] what (i of n rounds) ETA XmYs", and the last step is TOTAL.
last=$(grep -E '^\[[0-9]+/[0-9]+\] ' err.txt | tail -1) || fail "no progress lines: $(head err.txt)"
[[ $last =~ ^\[([0-9]+)/([0-9]+)\]\ .*\ ETA\ [0-9]+m[0-9]+s$ ]] || fail "progress line: $last"
[ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] || fail "progress ended at $last"

J=res/results.json
jq -e . "$J" >/dev/null || fail "results.json does not parse"
jq -e '.schema == 1 and (.machine.cpus > 0) and (.machine.kernel | length > 0)
       and (.machine.load_before | length == 3) and (.machine.load_after | length == 3)
       and (.tools.fio | startswith("fio")) and (.tools.strata | startswith("strata"))
       and (.machine.strata_build_type | length > 0)' "$J" >/dev/null \
  || fail "results.json: machine or tools incomplete: $(jq -c '{machine, tools}' "$J")"
# Every case, with a number in each entry's medians, and the ratios the report is about.
for c in transport cow depth snapshot merge fragmentation; do
  jq -e --arg c "$c" '[.cases[] | select(.case == $c)] | length > 0 and
        all(.median | to_entries | any(.value | type == "number")) and
        all(.rounds | length > 0)' "$J" >/dev/null || fail "results.json: case $c missing or without numbers"
done
for cfg in phys null qemu-raw nbdkit-file strata-none strata-wb; do
  jq -e --arg k "$cfg" '.cases[] | select(.case == "transport" and .workload == "rr4k-qd32"
        and .config == $k) | .median.iops > 0' "$J" >/dev/null || fail "transport rr4k-qd32 $cfg has no IOPS"
done
jq -e '.cases[] | select(.case == "transport" and .config == "strata-none" and .workload == "rr4k-qd32")
       | (.rounds | length == 2) and .peer == "qemu-raw" and (.vs_peer.iops > 0)
         and (.ceiling.iops > 0) and (.vs_ceiling.iops > 0) and (.median.server_cpu_us_per_io > 0)
         and (.median.server_user_us_per_io >= 0)
         and (.median.server_user_us_per_io <= .median.server_cpu_us_per_io)' \
  "$J" >/dev/null || fail "transport strata-none rr4k-qd32: rounds, peer, ceiling or CPU missing"
# Depth: the chain's ceiling is the 1-layer disk measured in the same rounds.
jq -e '.cases[] | select(.case == "depth" and .workload == "d64" and .config == "strata")
       | (.ceiling.how | test("1 layer, in the same rounds")) and (.vs_ceiling.iops > 0)' "$J" >/dev/null \
  || fail "depth d64 strata: no ceiling from the 1-layer disk of the same rounds"
# The server's stages of a request (strata stats) add up to at most fio's mean latency.
jq -e '.cases[] | select(.case == "transport" and .config == "strata-wb" and .workload == "rr4k-qd32")
       | .median | (.disk_us > 0) and (.send_us > 0) and (.before_disk_us >= 0)
         and (.server_us <= .mean_us) and (.client_socket_us > 0)' "$J" >/dev/null \
  || fail "transport strata-wb rr4k-qd32: the server's stages are missing or exceed fio's latency"
jq -e '.cases[] | select(.case == "snapshot" and .workload == "pause" and .config == "qemu")
       | (.samples | length == 10) and .median.pause_p99_ms > 0' "$J" >/dev/null \
  || fail "snapshot pause of qemu-storage-daemon: no samples"
jq -e '[.cases[] | select(.case == "merge" and (.workload | startswith("online")))] | length == 4
       and all(.timeline | length > 0)' "$J" >/dev/null || fail "merge: online runs or timelines missing"
jq -e '[.cases[] | select(.case == "merge" and .workload == "offline")] | length == 3
       and all(.median.verified == 1)' "$J" >/dev/null || fail "merge offline: a result was not verified"

R=res/report.md
for table in '## transport' '## cow' '## depth' '## snapshot: live snapshot pause' \
             '## snapshot: 4k random write' '## merge' '## fragmentation' '## Efficiency goals' \
             "Where a strata request's time goes" \
             "Server CPU per I.O beside what every server pays" \
             '## Commands'; do
  grep -q "^$table" "$R" || fail "report.md has no section '$table'"
  [ "$table" = '## Commands' ] && continue
  sed -n "/^$table/,/^## /p" "$R" | grep -q '^|---' || fail "report.md: '$table' has no table"
done
grep -q '^| load average before / after |' "$R" || fail "report.md: no load average"
grep -q -- '--quick run' "$R" || fail "report.md does not say it is a --quick run"

if command -v gnuplot >/dev/null; then
  for png in transport-iops transport-mbs latency depth pause merge; do
    [ "$(head -c 4 "res/$png.png" 2>/dev/null | od -An -c | tr -d ' ')" = "211PNG" ] \
      || fail "chart res/$png.png missing or not a PNG"
  done
fi
# Without gnuplot: the report is still written, and says why there are no charts.
rm -f res/*.png res/report.md
PATH=/nonexistent /usr/bin/python3 "$(dirname "$(readlink -f "$STRATA")")/../bench/report.py" res \
  >report.out 2>report.err || fail "report.py without gnuplot failed: $(cat report.err)"
grep -q "gnuplot is not installed" report.err || fail "report.py without gnuplot: $(cat report.err)"
[ -s res/report.md ] && [ -z "$(ls res/*.png 2>/dev/null)" ] || fail "report.py without gnuplot: report or PNGs"
log "PASS"
