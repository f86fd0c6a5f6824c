#!/usr/bin/env bash
# The CPU test suite built with AddressSanitizer + UndefinedBehaviorSanitizer (docs/testing.md):
# "no out-of-bounds read, no use after free, no undefined behaviour" checked rather than assumed.
#   scripts/sanitize.sh [ctest args...]     e.g. -L core, -R Safetensors
# Uses the project's .venv (scripts/bootstrap.sh build first) and its own build folder
# (build-sanitize; WANHOST_BUILD_DIR overrides), so the normal build is untouched. Wanhost's code is
# instrumented; LibTorch is not (ASan allows that). A finding aborts the test that made it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${WANHOST_BUILD_DIR:-build-sanitize}
SANITIZERS=${WANHOST_SANITIZE:-address,undefined}
PYTHON=${WANHOST_PYTHON:-$PWD/.venv/bin/python}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DWANHOST_SANITIZE="$SANITIZERS" -DWANHOST_FUZZ=OFF \
    -DCMAKE_PREFIX_PATH="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
    -DWANHOST_TEST_PYTHON="$PYTHON" ${WANHOST_CMAKE_ARGS:-} >/dev/null
fi
cmake --build "$BUILD_DIR" -j "$(nproc)"
# detect_leaks=0: LibTorch keeps process-lifetime allocations (its operator registry, thread
# pools) that LeakSanitizer would report at every exit. protect_shadow_gap=0: CUDA builds of
# LibTorch map memory where ASan would otherwise protect its shadow gap.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:protect_shadow_gap=0:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
exec ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" -LE "gpu|slow" "$@"
