#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite: every test in the
# optimized build; the unit and integration tests again under AddressSanitizer + UBSan; the
# threaded tests (chain, engine, control, multi-conn and live libnbd suites) under
# ThreadSanitizer; each fuzz target for 30 s.
# This is the command `.ci/run` runs. Exit status: nonzero when any test fails.
# Wall times on a 2-core machine are in tests/README.md, "Fuzzing and sanitizer builds".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" --with-guest
"$top/scripts/build.sh" "$top/build"
"$top/scripts/build.sh" "$top/build-asan" -DSTRATA_SANITIZE=ON
# ThreadSanitizer: the tests that run threads. Debian's Abseil is not built with TSan, so
# every lock goes through strata::Mutex / strata::Notification (blockstore/mutex.h), which
# tell TSan. The strata binary the libnbd suites start is build-tsan's, so a race in the
# server makes its exit status nonzero and the test fail (tests/README.md, the tsan row).
tsan_targets=(blockstore_tests buffer_pool_test storage_test engine_test admission_test
  control_socket_test live_control_test strata nbd_multi_conn_test live_snapshot_test
  live_control_socket_test live_merge_test live_lifecycle_test nbd_base_test)
tsan_tests='^(ChainTest|RemoteBaseTest|NbdBaseTest|BufferPoolTest|ChainStorageTest|GroupFlushTest'
tsan_tests+='|MutexTest|NotificationTest'
tsan_tests+='|Engine[A-Za-z]*Test|Admission[A-Za-z]*Test|ControlSocketTest|LiveControl[A-Za-z]*Test'
tsan_tests+='|MultiConnTest|LiveSnapshotTest|LiveMerge[A-Za-z]*Test|LiveLifecycleTest)[.][^.]*$'
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
# kill_sweep.sh (it runs strata under strace, where LeakSanitizer cannot work); merge_kill.sh
# (a timed kill -9 sweep, 188 s under ASan, whose timing ASan changes: tests/README.md);
# readme_workflows.sh (its 90 s budget is too short under ASan); hostile_memory.sh (it bounds
# the server's RSS, and ASan's shadow memory and 256 MiB quarantine are not the server's).
echo "=== unit and integration tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$top/build-asan" --output-on-failure -j2 -L 'unit|integration' \
  -E '[.]background$|^(kill_sweep|merge_kill|readme_workflows|hostile_memory)[.]sh$' --timeout 900
# Reports go to files as well as failing the process: a race the server reports while it
# stops (after the test's last check) is still caught here.
echo "=== the threaded unit tests and libnbd suites under ThreadSanitizer"
rm -rf "$top/build-tsan/reports" && mkdir "$top/build-tsan/reports"
tsan_rc=0
TSAN_OPTIONS="halt_on_error=1 log_path=$top/build-tsan/reports/tsan" \
  ctest --test-dir "$top/build-tsan" --output-on-failure -j2 -R "$tsan_tests" --timeout 900 ||
  tsan_rc=$?
if compgen -G "$top/build-tsan/reports/tsan*" >/dev/null; then
  cat "$top"/build-tsan/reports/tsan*
  tsan_rc=1
fi
[ "$tsan_rc" -eq 0 ]
echo "=== fuzz targets, 30 s each (scripts/fuzz.sh SECONDS for longer runs)"
ctest --test-dir "$top/build-fuzz" --output-on-failure -j2 -L fuzz
echo "=== all tests passed"
