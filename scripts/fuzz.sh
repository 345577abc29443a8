#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/, clang + ASan + UBSan) in build-fuzz/ and runs each
# for SECONDS (default 600), two at a time, from its committed seeds; prints each target's
# executions and the corpus it grew. Exit status: nonzero when any target found a crash, leak,
# hang or out-of-memory (the input is left in build-fuzz/tests/fuzz/<target>.work/).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]       (CI runs 30 s each: ctest -L fuzz)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-600}
shift || true
build=$top/build-fuzz
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_FUZZ=ON \
  -DCMAKE_CXX_COMPILER=clang++ >/dev/null
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nbd_handshake_fuzz nbd_request_fuzz layer_header_fuzz
                                     layer_journal_fuzz text_journal_fuzz control_request_fuzz)
cmake --build "$build" -j2 --target "${targets[@]}"
fuzz=$build/tests/fuzz
run() {
  "$top/tests/fuzz/run_fuzzer.sh" "$fuzz/$1" "$top/tests/fuzz/corpus/$1" "$fuzz/$1.work" \
    "$seconds" >"$fuzz/$1.log" 2>&1
}
export -f run
export top fuzz seconds
status=0
printf '%s\n' "${targets[@]}" | xargs -P2 -I{} bash -c 'run {}' || status=$?
for t in "${targets[@]}"; do
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$fuzz/$t.log")
  echo "$t: ${execs:-?} executions in ${seconds} s, corpus $(ls "$fuzz/$t.work/corpus" | wc -l) inputs" \
       "$(grep -m1 -E '^SUMMARY|ERROR: libFuzzer' "$fuzz/$t.log" || true)"
done
exit $status
