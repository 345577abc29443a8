#!/usr/bin/env bash
# Issue 13, hostile clients and memory: the probes an attacker ran against `strata serve` (raw
# sockets, tests/lib/hostile_client.py), each while a well-behaved libnbd client writes and reads
# on another connection:
#   200 connections stalled in 32 MiB WRITE payloads (6.4 GiB of RSS before);
#   12 connections pipelining 32 MiB READs and never reading a reply (3.1 GiB);
#   8 000 idle connections (1 GiB: an input buffer each);
#   an idle handshake (still open after 70 s), a WRITE payload that stops arriving.
# Asserts under each probe: peak RSS (VmHWM, reset between probes) below the buffer budget plus
# 128 MiB (8 000 idle connections: 96 MiB above the RSS before), the server near idle while the
# attackers stall, every good-client operation within 1 s, every connection closed once its
# attacker goes; the handshake and the stalled payload closed after their timeouts with the
# reason logged; and every acknowledged good write on the disk at the end.
# Then, with --max-buffer-memory 64M, a client waiting for budget that disconnects: it leaks
# nothing and blocks nobody (the next waiter is served, a good client within 1 s, and `stats`
# shows the pool back at 0 once all are gone).
# Usage: hostile_memory.sh STRATA_BINARY
set -euo pipefail
source "$(dirname "$0")/lib/interop_lib.sh"
[ "$SERVER_KIND" = strata ] || skip "strata's own buffer budget: not $SERVER_KIND's"
need prlimit timeout
/usr/bin/python3 -c 'import nbd' 2>/dev/null || skip "python3-libnbd not installed"
interop_init "$@"
STRATA="$(realpath "$STRATA")"
CLIENT="$(realpath "$(dirname "$0")/lib/hostile_client.py")"
BUDGET_MIB=256
HANDSHAKE_S=2
REQUEST_S=4
GOOD_LOG="$WORK/good.log"

mkdir -p "$WORK/d" "$WORK/elsewhere"
cd "$WORK/elsewhere"
"$STRATA" create --size 64M ../d/disk.strata >/dev/null
# Background mode, relative paths, as the README starts it; descriptors for 8 000 clients, and
# caps above them (the idle probe negotiates 8 000 connections at once).
timeout 20 prlimit --nofile=9000 -- "$STRATA" serve --pid-file ../d/disk.pid \
  --log-file ../d/server.log --max-buffer-memory "${BUDGET_MIB}M" \
  --max-connections 8500 --max-handshakes 8500 \
  --handshake-timeout "$HANDSHAKE_S" --request-timeout "$REQUEST_S" ../d/disk.strata
SERVER_PID="$(cat ../d/disk.pid)"
SOCK="$WORK/d/disk.sock"
URI="nbd+unix:///?socket=$SOCK"
ln -sf ../d/server.log "$WORK/server.log"  # interop_lib's fail shows it

HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
peak_mib() { awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$SERVER_PID/status"; }
rss_mib() { awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$SERVER_PID/status"; }
# Resets VmHWM once the RSS has settled: the last probe's connections may still be closing.
reset_peak() {
  for _ in $(seq 50); do
    echo 5 >"/proc/$SERVER_PID/clear_refs"
    sleep 0.1
    [ "$(peak_mib)" -le $(($(rss_mib) + 8)) ] && return
  done
}

# The good client for 2 s: every write and read back within 1 s.
good_client() {
  local out slowest count
  out=$(timeout 30 /usr/bin/python3 "$CLIENT" good "$URI" "$1" 2 "$GOOD_LOG") ||
    fail "$1: the good client failed: $out"
  read -r slowest count <<<"$out"
  log "$1: good client: $count writes+reads, slowest $slowest ms"
  [ "$count" -ge 1 ] || fail "$1: the good client got nothing done"
  [ "$slowest" -lt 1000 ] || fail "$1: a good-client operation took $slowest ms"
}

# probe NAME RSS_BOUND_MIB ATTACK...: the attack set up and holding; the good client served,
# the server near idle, its peak RSS under the bound (+N: N MiB above the RSS it starts at).
probe() {
  local name=$1 bound=$2 start; shift 2
  reset_peak
  start=$(rss_mib)
  [[ $bound == +* ]] && bound=$((start + ${bound#+}))
  timeout 120 /usr/bin/python3 "$CLIENT" "$@" >"$WORK/$name.out" 2>&1 &
  local attacker=$!
  for _ in $(seq 600); do grep -qs ready "$WORK/$name.out" && break; sleep 0.1; done
  grep -q ready "$WORK/$name.out" ||
    fail "$name: the attack did not set up: $(cat "$WORK/$name.out")"
  good_client "$name"
  local before after
  before=$(cpu_ticks); sleep 2; after=$(cpu_ticks)
  log "$name: server CPU while the attackers stall: $((after - before)) ticks in 2 s ($HZ/s)"
  [ $((after - before)) -le $((HZ / 2)) ] ||
    fail "$name: the server spins ($((after - before)) ticks in 2 s)"
  local peak; peak=$(peak_mib)
  log "$name: peak RSS $peak MiB, from $start MiB (bound $bound MiB)"
  [ "$peak" -lt "$bound" ] || fail "$name: peak RSS $peak MiB, not under $bound MiB"
  kill "$attacker" 2>/dev/null || true; wait "$attacker" 2>/dev/null || true
  # The attacker gone, every connection closes, also those that waited for the budget with
  # requests unparsed (they are answered, to nobody, as budget comes back).
  # (The log's open and close lines are rate-limited: ask the server.)
  local open
  for _ in $(seq 300); do
    open=$("$STRATA" stats --json ../d/disk.strata |
      /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["connections_open"])')
    [ "$open" = 0 ] && return
    sleep 0.2
  done
  fail "$name: $open connections still open 60 s after the attacker went"
}

probe writes $((BUDGET_MIB + 128)) writes "$SOCK" 200 60
probe reads $((BUDGET_MIB + 128)) reads "$SOCK" 12 16 60
# What idle connections add to the RSS they find (the workers' pools keep freed buffers).
probe idle +96 idle "$SOCK" 8000 60

# closed_after ATTACK TIMEOUT_S LOG_TEXT: the attack's connection is closed by the server
# TIMEOUT_S seconds in (the sweep runs once a second), and the close line says why.
closed_after() {
  local attack=$1 timeout_s=$2 why=$3 took
  took=$(timeout 30 /usr/bin/python3 "$CLIENT" "$attack" "$SOCK" $((timeout_s + 10))) ||
    fail "$attack: $took"
  log "$attack: closed after $took s (timeout $timeout_s s)"
  awk -v t="$took" -v lo="$timeout_s" 'BEGIN { exit !(t >= lo - 0.5 && t <= lo + 2) }' ||
    fail "$attack: closed after $took s, not about $timeout_s s"
  grep -qF "$why" ../d/server.log || fail "$attack: no log line says \"$why\""
}
# An idle handshake, and a WRITE whose payload stops arriving (its buffer freed).
closed_after handshake "$HANDSHAKE_S" "closed (handshake not finished within ${HANDSHAKE_S}s)"
closed_after stall "$REQUEST_S" "no payload bytes for ${REQUEST_S}s (4096 of 1048576 received)"

# Nothing acknowledged was lost, read on a fresh connection once the attackers are gone.
out=$(timeout 60 /usr/bin/python3 "$CLIENT" verify "$URI" "$GOOD_LOG") || fail "verify: $out"
log "$out"
log "ok: every probe stayed under its RSS bound with the good client served within 1 s"
terminate_pid "$SERVER_PID"

# A client waiting for budget disconnects (the smallest budget; payloads never time out here;
# one worker, so that both waiters wait on one list).
"$STRATA" create --size 128M ../d/small.strata >/dev/null
timeout 20 "$STRATA" serve --pid-file ../d/small.pid --log-file ../d/small.log \
  --workers 1 --max-buffer-memory 64M --request-timeout 60 ../d/small.strata
SERVER_PID="$(cat ../d/small.pid)"
ln -sf ../d/small.log "$WORK/server.log"
out=$(timeout 90 /usr/bin/python3 "$CLIENT" budget-wait "$WORK/d/small.sock" \
  "nbd+unix:///?socket=$WORK/d/small.sock" "$STRATA" ../d/small.strata) || fail "budget-wait: $out"
while read -r line; do log "budget-wait: $line"; done <<<"$out"
log PASS
