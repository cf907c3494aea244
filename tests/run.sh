#!/bin/sh
# The whole test suite, as CI runs it (README's second command):
#   1. gcc build with -Werror: unit, fuzz-corpus replay and integration tests
#   2. clang build with ASan+UBSan: the same tests again
#   3. clang libFuzzer build: each fuzz target runs for a short fixed time
# Exits non-zero if anything fails. Build trees go to build/ (ignored by git).
set -eu
cd "$(dirname "$0")/.."
sh tests/install-deps.sh

# The tests run Pebble from Debian's source with our lock-order fixes
# (tests/pebble/build.sh); built once, reused while the patch is unchanged.
# Where the source package cannot be had (an archive mirror without sources),
# the packaged Pebble stands in, with a warning: it can deadlock when many
# orders run at once, which test_ondemand's 200 names sometimes hit.
if ! sh tests/pebble/build.sh build/pebble; then
    echo "WARNING: could not build the patched Pebble; the tests use Debian's" \
        "/usr/bin/pebble, which can deadlock under concurrent orders" >&2
    mkdir -p build/pebble
    rm -f build/pebble/stamp
    ln -sf /usr/bin/pebble build/pebble/pebble
fi

JOBS=${JOBS:-2}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}

echo "== format check (clang-format 14, .clang-format)"
git ls-files '*.c' '*.h' | xargs clang-format --dry-run -Werror

echo "== gcc -Werror build + tests"
cmake -S . -B build/ci -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDM_WERROR=ON >/dev/null
cmake --build build/ci -j"$JOBS"
(cd build/ci && ctest --output-on-failure -j"$JOBS")

echo "== clang ASan+UBSan build + tests"
cmake -S . -B build/asan -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
    -DDM_SANITIZE=address,undefined -DDM_WERROR=ON >/dev/null
cmake --build build/asan -j"$JOBS"
(cd build/asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$JOBS")

echo "== libFuzzer runs (${FUZZ_SECONDS}s per target)"
cmake -S . -B build/fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
    -DDM_SANITIZE=address,undefined -DDM_FUZZ=ON -DDM_FUZZ_SECONDS="$FUZZ_SECONDS" \
    -DDM_WERROR=ON >/dev/null
cmake --build build/fuzz -j"$JOBS"
(cd build/fuzz && ctest --output-on-failure -L fuzz)
