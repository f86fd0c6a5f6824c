#!/usr/bin/env bash
# Packs test binaries of the dev machine's build for a device call that needs no build (a fresh
# device machine spends ~150 s building; a carried test starts at once). The dev machine's build
# is a CUDA build (sm_90) against the project's LibTorch 2.11.0+cu130, the device's LibTorch, so
# its binaries run there with the device's LibTorch and CUDA libraries; what the device lacks
# (wanhost's own libraries, spdlog, fmt) travels with them. Debug info is stripped (the kit is
# ~47 MB with it, ~2 MB without) to stay far below the 64 MiB a call carries.
#   scripts/device/prebuilt-tests.sh TEST_BINARY...     (e.g. test_optim test_kernels)
# then `run` with carry ["build-carry"] and the command
#   build-carry/run.sh TEST_BINARY [GTEST_ARGS...]
# Test binaries that link FFmpeg or MPI (the device has neither) do not run there this way; nor
# does the wanhost program (it links FFmpeg for `prepare`): whole-step runs build on the device
# (scripts/device/build.sh). First used 2026-12-05 10:45 UTC (test_optim, 12 s on an H100).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${BUILD:-build}
[ $# -gt 0 ] || { echo "usage: $0 TEST_BINARY..." >&2; exit 2; }
rm -rf build-carry && mkdir -p build-carry
for t in "$@"; do
  [ -x "$B/bin/$t" ] || { echo "$B/bin/$t: not built (ninja -C $B $t)" >&2; exit 2; }
  cp "$B/bin/$t" build-carry/
  if ldd "$B/bin/$t" | grep -qE "libav|libmpi"; then
    echo "$t links FFmpeg or MPI, which the device lacks" >&2
    exit 2
  fi
done
# wanhost's libraries and the system ones the device lacks, as the binaries found them here.
for t in "$@"; do ldd "$B/bin/$t"; done | awk '{print $1, $3}' | sort -u |
  while read -r name path; do
    case $name in
      libwanhost*.so* | libspdlog.so* | libfmt.so*) cp -L "$path" "build-carry/$name" ;;
    esac
  done
strip --strip-debug build-carry/*
cat >build-carry/run.sh <<'EOF'
#!/usr/bin/env bash
# On the device: runs a carried test binary with the device's LibTorch and CUDA libraries.
cd "$(dirname "$0")/.."
T=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$PWD/build-carry:$T:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
bin=build-carry/$1
shift
ldd "$bin" | grep "not found" >&2
exec "$bin" "$@"
EOF
chmod +x build-carry/run.sh
du -sh build-carry
