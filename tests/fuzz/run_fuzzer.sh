#!/usr/bin/env bash
# Runs one libFuzzer target for a bounded time from its committed seeds.
# Usage: run_fuzzer.sh BINARY SEED_DIR WORK_DIR SECONDS
# Exit status: nonzero on any crash, leak, sanitizer report, timeout (a hang) or out-of-memory;
# the input that caused it is left in WORK_DIR as crash-*, leak-*, timeout-* or oom-*.
set -euo pipefail
bin=$1 seeds=$2 work=$3 seconds=$4
mkdir -p "$work/corpus"
# -timeout: one input taking 10 s is a hang; -rss_limit_mb: a parser that allocates what a
# length field claims shows up as an OOM well before it takes the machine's memory.
# -print_final_stats gives the executions for tests/RELIABILITY.md.
exec "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" "$seeds"
