#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite: every test in the
# optimized build; the unit and integration tests again under AddressSanitizer + UBSan; the
# chain's and buffer pool's concurrent tests under ThreadSanitizer; each fuzz target for 30 s.
# This is the command `.ci/run` runs. Exit status: nonzero when any test fails.
# Wall times on a 2-core machine are in tests/README.md, "Fuzzing and sanitizer builds".
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" --with-guest
"$top/scripts/build.sh" "$top/build"
"$top/scripts/build.sh" "$top/build-asan" -DSTRATA_SANITIZE=ON
# ThreadSanitizer: only the tests whose locks TSan can see are built and run. Debian's Abseil
# is not built with TSan, so every absl::Mutex looks unlocked to it (blockstore/mutex.h); the
# chain and the buffer pool lock through strata::Mutex, which tells TSan, but the engine's
# workers, the server, the control socket and so the libnbd suites still use absl::Mutex
# directly and would report a race for every access under a lock (tests/README.md).
cmake -S "$top" -B "$top/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_TSAN=ON >/dev/null
cmake --build "$top/build-tsan" --target blockstore_tests buffer_pool_test storage_test -j"$(nproc)"
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
echo "=== the chain's and the buffer pool's concurrent tests under ThreadSanitizer"
TSAN_OPTIONS=halt_on_error=1 ctest --test-dir "$top/build-tsan" --output-on-failure -j2 \
  -R '^(ChainTest|BufferPoolTest|ChainStorageTest)[.]' --timeout 900
echo "=== fuzz targets, 30 s each (scripts/fuzz.sh SECONDS for longer runs)"
ctest --test-dir "$top/build-fuzz" --output-on-failure -j2 -L fuzz
echo "=== all tests passed"
