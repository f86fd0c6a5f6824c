#!/usr/bin/env bash
# Builds wanhost into build-gpu on a GPU machine of the `device` tool (no package registry there):
# the Debian packages the build needs travel in .deps/ (fetch them here with
# scripts/device/fetch-debs.sh; name .deps in `carry`) and are unpacked into .deps/root (never
# into /) on every call, since the carried folder replaces the machine's copy. Cheap when the
# targets are already built.
#   scripts/device/build.sh [--tests] [TARGET...]   (default: runtime, the program and its plugins)
# --tests configures the test tree with only the folders in TEST_DIRS (default: kernels wan21_dit
# sdk train; the others need the Python reference packages; wan21_dit's parity tests skip without
# them, its GPU tests run). Without sentencepiece the umt5 plugin is left out; without FFmpeg or
# MPI development files the build leaves out `prepare` / CPU multi-process runs by itself. These
# edits touch the device's copy of the tree, never the repo.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests=OFF
if [ "${1:-}" = --tests ]; then tests=ON; shift; fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(runtime)
. scripts/device/deps.sh
pkg-config --exists sentencepiece 2>/dev/null || rm -rf plugins/umt5 tests/umt5
if [ $tests = ON ]; then
  keep=" ${TEST_DIRS:-kernels wan21_dit sdk train} "
  for d in tests/*/; do
    name=$(basename "$d")
    [[ "$keep" == *" $name "* ]] || rm -f "$d/CMakeLists.txt"
  done
fi
t0=$SECONDS
configure . build-gpu -DCMAKE_BUILD_TYPE=Release -DWANHOST_BUILD_TESTS=$tests ${CMAKE_EXTRA:-}
ninja -C build-gpu "${targets[@]}"
echo "build-gpu: ${targets[*]} built in $((SECONDS - t0)) s" >&2
