#!/usr/bin/env bash
# Installs every dependency, builds, and runs the whole test suite: every test in the
# optimized build, and the unit tests again under AddressSanitizer + UBSan.
# This is the command `.ci/run` runs. Exit status: nonzero when any test fails.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh" --with-guest
"$top/scripts/build.sh" "$top/build"
"$top/scripts/build.sh" "$top/build-asan" -DSTRATA_SANITIZE=ON
# ThreadSanitizer: only the chain's concurrent tests need it, so only their binary is built.
cmake -S "$top" -B "$top/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_TSAN=ON >/dev/null
cmake --build "$top/build-tsan" --target blockstore_tests -j"$(nproc)"
echo "=== all tests (optimized build)"
ctest --test-dir "$top/build" --output-on-failure -j2 --timeout 900
echo "=== unit tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$top/build-asan" --output-on-failure -j2 -L unit --timeout 900
echo "=== the chain's concurrent tests under ThreadSanitizer"
TSAN_OPTIONS=halt_on_error=1 "$top/build-tsan/blockstore/blockstore_tests" \
  --gtest_filter='ChainTest.*' --gtest_brief=1
echo "=== all tests passed"
