#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite: every test in the
# optimized build; the unit and integration tests again under AddressSanitizer + UBSan; the
# server's concurrent tests under ThreadSanitizer; and each fuzz target for 30 s.
# This is the command `.ci/run` runs. Exit status: nonzero when any test fails.
# Wall times on a 2-core machine are in tests/README.md, "Fuzzing and sanitizer builds".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" --with-guest
"$top/scripts/build.sh" "$top/build"
"$top/scripts/build.sh" "$top/build-asan" -DSTRATA_SANITIZE=ON
# ThreadSanitizer: the binaries of the tests in $tsan_tests below (and the strata binary the
# integration suites among them start), not every test binary: TSan builds are slow.
tsan_targets=(strata blockstore_tests engine_test storage_test buffer_pool_test
              live_control_test control_socket_test live_snapshot_test live_merge_test
              live_control_socket_test live_lifecycle_test nbd_multi_conn_test)
cmake -S "$top" -B "$top/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_TSAN=ON >/dev/null
cmake --build "$top/build-tsan" --target "${tsan_targets[@]}" -j"$(nproc)"
# libFuzzer targets: clang, with ASan + UBSan (tests/fuzz/).
cmake -S "$top" -B "$top/build-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_FUZZ=ON \
  -DCMAKE_CXX_COMPILER=clang++ >/dev/null
cmake --build "$top/build-fuzz" --target nbd_handshake_fuzz nbd_request_fuzz layer_header_fuzz \
  layer_journal_fuzz text_journal_fuzz control_request_fuzz -j"$(nproc)"

echo "=== all tests (optimized build)"
ctest --test-dir "$top/build" --output-on-failure -j2 --timeout 900
# The strata binary the integration tests start is the ASan one, so a report in the server
# makes its exit status nonzero and the test fail. Left to the optimized build: the
# .background copies of the libnbd suites (the same requests against the same code);
# kill_sweep.sh and merge_kill.sh (they run strata under strace, where LeakSanitizer cannot
# work, and are the longest); readme_workflows.sh (its 90 s budget is too short under ASan).
echo "=== unit and integration tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$top/build-asan" --output-on-failure -j2 -L 'unit|integration' \
  -E '[.]background$|^(kill_sweep|merge_kill|readme_workflows)[.]sh$' --timeout 900
# The server's threads and rings: the engine, the control socket and live control, the chain,
# and the live snapshot / merge / lifecycle and multi-connection suites (foreground server).
tsan_tests='^(Engine[A-Za-z]*Test|ChainStorageTest|GroupFlushTest|BufferPoolTest|ControlSocketTest|ControlLineTest|LiveControl[A-Za-z]*Test|ChainTest|LiveSnapshotTest|LiveMerge[A-Za-z]*Test|LiveControlSocketTest|LiveLifecycleTest|MultiConnTest)[.]'
echo "=== the server's concurrent tests under ThreadSanitizer"
TSAN_OPTIONS="halt_on_error=1 suppressions=$top/tests/tsan.supp" \
  ctest --test-dir "$top/build-tsan" --output-on-failure -j2 -R "$tsan_tests" \
  -E '[.]background$' --timeout 900
echo "=== fuzz targets, 30 s each (scripts/fuzz.sh SECONDS for longer runs)"
ctest --test-dir "$top/build-fuzz" --output-on-failure -j2 -L fuzz
echo "=== all tests passed"
