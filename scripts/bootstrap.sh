#!/usr/bin/env bash
# wanhost's one entry point for a fresh machine (Debian 12 / x86-64):
#   scripts/bootstrap.sh run [wanhost run args...]  install what is missing, build, run the default recipe
#   scripts/bootstrap.sh test [ctest args...]       install what is missing, build, run the whole test suite
#   scripts/bootstrap.sh build                      install what is missing and build
# Idempotent: each step checks first and does nothing when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-build}
[ $# -gt 0 ] && shift
BUILD_DIR=${WANHOST_BUILD_DIR:-build}
TORCH_VERSION=2.11.0

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

# 1. Debian packages (compilers, build tools and the C++ libraries of docs/architecture.md).
APT_PACKAGES=(
  g++ cmake ninja-build ccache pkg-config python3 python3-venv python3-pip
  libboost-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev
  libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin
  libavformat-dev libavcodec-dev libavutil-dev libswscale-dev ffmpeg
  libsentencepiece-dev libpng-dev clang libclang-rt-14-dev rpm
  libplplot-dev plplot-driver-cairo
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. LibTorch from the torch wheel, in a project-local virtual environment.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  say "installing torch==$TORCH_VERSION into .venv (LibTorch headers, libraries and CMake package)"
  .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy
fi
# Reference implementations (Diffusers, Transformers) that the tests compare against.
if [ "$MODE" = test ]; then
  stamp=.venv/.wanhost-test-requirements
  if ! cmp -s tests/reference/requirements.txt "$stamp" 2>/dev/null; then
    say "installing the test reference packages (tests/reference/requirements.txt)"
    .venv/bin/pip install -q --disable-pip-version-check -r tests/reference/requirements.txt
    cp tests/reference/requirements.txt "$stamp"
  fi
fi

# 3. Configure (once) and build.
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  say "configuring $BUILD_DIR"
  cmake -S . -B "$BUILD_DIR" -G Ninja \
    -DCMAKE_PREFIX_PATH="$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
    -DWANHOST_TEST_PYTHON="$ROOT/.venv/bin/python" >/dev/null
fi
# A run needs the program and its plugins; the tests need everything.
if [ "$MODE" = run ]; then
  say "building the program and its plugins"
  cmake --build "$BUILD_DIR" -j "$(nproc)" --target runtime
else
  say "building"
  cmake --build "$BUILD_DIR" -j "$(nproc)"
fi

# 4. Run.
case "$MODE" in
  run)
    out="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
    say "running the built-in default recipe into $out"
    exec "$BUILD_DIR/bin/wanhost" run --out "$out" "$@"
    ;;
  test)
    say "running the test suite"
    exec ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"
    ;;
  build) ;;
  *) echo "usage: scripts/bootstrap.sh run|test|build [args...]" >&2; exit 2 ;;
esac
