#!/usr/bin/env bash
# Builds wanhost on a GPU machine of the `device` tool (no package registry there): the Debian
# packages the build needs travel in .deps/ (fetch them here with scripts/device/fetch-debs.sh),
# are unpacked into .deps/root (never into /), and CMake is pointed at them and at the image's
# PyTorch. Usage: scripts/device/build.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/../.."
P=$PWD/.deps/root
if [ ! -d "$P/usr/include" ]; then
  for f in .deps/*.deb; do dpkg -x "$f" "$P"; done
fi
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$P/usr" -DBoost_INCLUDE_DIR="$P/usr/include" \
  -DWANHOST_BUILD_TESTS=OFF "$@" >/dev/null
cmake --build build-gpu -j "$(nproc)"
