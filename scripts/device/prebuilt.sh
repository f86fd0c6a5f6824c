#!/usr/bin/env bash
# Packs binaries built on the dev machine for a device call that needs no build (a fresh device
# machine spends ~150 s of the session's device time building; carried binaries start at once).
# The dev machine builds for sm_90 against the project's LibTorch 2.11.0+cu130, the device's
# LibTorch, so its binaries run there with the device's LibTorch and CUDA libraries; what the
# device lacks (wanhost's own libraries, spdlog, fmt, libpng, sentencepiece) travels with them,
# stripped of debug info to stay far below the 64 MiB a call carries.
#   scripts/device/prebuilt.sh [--program] [TEST_BINARY...]
#     --program: the wanhost program, its plugins and the TEST_BINARYs from build-device/, a
#                Release build made like the device's (no FFmpeg, no MPI, which the device
#                lacks), configured and built here as needed (~15-30 min on 2 cores the first
#                time, ccache helping):
#                  cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release
#                    -DWANHOST_FFMPEG=OFF -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON
#                    -DCMAKE_PREFIX_PATH=<torch> -DWANHOST_TEST_PYTHON=.venv/bin/python
#                  ninja -C build-device runtime TEST_BINARY...
#     without it: the TEST_BINARYs from build/ (they must link neither FFmpeg nor MPI).
# Then `run` with carry ["build-carry", ...]; on the device `. build-carry/env.sh` sets
# LD_LIBRARY_PATH, and scripts/device/fp8.sh with PREBUILT=1 uses build-carry/bin instead of
# building. Layout: build-carry/bin, build-carry/lib, build-carry/plugins (as a build tree: the
# program finds its plugins in ../plugins). First used 2026-12-05 (test_optim, 12 s on an H100).
set -euo pipefail
cd "$(dirname "$0")/../.."
PROGRAM_BUILD=${PROGRAM_BUILD:-build-device}
TEST_BUILD=build
program=0
if [ "${1:-}" = --program ]; then program=1; shift; fi
[ $program = 1 ] || [ $# -gt 0 ] || { echo "usage: $0 [--program] [TEST_BINARY...]" >&2; exit 2; }
rm -rf build-carry && mkdir -p build-carry/bin build-carry/lib
elfs=()
if [ $program = 1 ]; then
  if [ ! -f "$PROGRAM_BUILD/build.ninja" ]; then
    cmake -S . -B "$PROGRAM_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DWANHOST_FFMPEG=OFF \
      -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DWANHOST_TEST_PYTHON="$PWD/.venv/bin/python" \
      -DCMAKE_PREFIX_PATH="$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
      >/dev/null
  fi
  ninja -C "$PROGRAM_BUILD" runtime "$@" >/dev/null
  TEST_BUILD=$PROGRAM_BUILD
  cp "$PROGRAM_BUILD/bin/wanhost" build-carry/bin/
  mkdir -p build-carry/plugins
  cp "$PROGRAM_BUILD"/plugins/*.so "$PROGRAM_BUILD"/plugins/*.json build-carry/plugins/
  elfs+=("$PROGRAM_BUILD/bin/wanhost" "$PROGRAM_BUILD"/plugins/*.so)
fi
for t in "$@"; do
  [ -x "$TEST_BUILD/bin/$t" ] || { echo "$TEST_BUILD/bin/$t: not built" >&2; exit 2; }
  cp "$TEST_BUILD/bin/$t" build-carry/bin/
  elfs+=("$TEST_BUILD/bin/$t")
done
linked=$(for f in "${elfs[@]}"; do ldd "$f"; done)
if grep -qE "lib(av[a-z]*|mpi)\.so" <<<"$linked"; then
  echo "a binary links FFmpeg or MPI, which the device lacks:" \
    "$(grep -oE 'lib(av[a-z]*|mpi)\.so[^ ]*' <<<"$linked" | sort -u | tr '\n' ' ')" >&2
  exit 2
fi
# Every library the binaries load that is neither the C/C++ runtime nor LibTorch's or CUDA's
# (both on the device): wanhost's own and the few system ones the device lacks.
awk '$3 ~ /^\// {print $1, $3}' <<<"$linked" | sort -u |
  while read -r name path; do
    case $name in
      libc.so* | libm.so* | libstdc++.so* | libgcc_s.so* | libpthread.so* | libdl.so* | \
        librt.so* | libutil.so* | libz.so* | ld-linux*) continue ;;
    esac
    case $path in */torch/lib/* | /usr/local/cuda*) continue ;; esac
    [ -e "build-carry/lib/$name" ] || cp -L "$path" "build-carry/lib/$name"
  done
strip --strip-debug build-carry/bin/* build-carry/lib/* build-carry/plugins/*.so 2>/dev/null || true
cat >build-carry/env.sh <<'ENV'
# Sourced on the device: the carried libraries, then the device's LibTorch and CUDA.
_carry=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_torch=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)/lib
export LD_LIBRARY_PATH=$_carry/lib:$_torch:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for _f in "$_carry"/bin/*; do ldd "$_f" | grep "not found" | sed "s|^|$(basename "$_f"): |" >&2; done
ENV
du -sh build-carry
