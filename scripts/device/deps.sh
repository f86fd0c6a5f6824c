# Sourced by the device scripts: the Debian packages of .deps/ (scripts/device/fetch-debs.sh; name
# .deps in `carry`) unpacked into .deps/root (never into /), and configure SRC BUILD [ARGS...],
# which points CMake at them and at the machine's LibTorch.
P=$PWD/.deps/root
if [ ! -d "$P/usr/include" ]; then
  for f in .deps/*.deb; do dpkg -x "$f" "$P"; done
  # zlib1g-dev (libpng's pkg-config needs it) brings a static libz.a, which cannot go into a
  # shared library, and a libz.so link to a file it does not carry: link the machine's zlib.
  rm -f "$P/usr/lib/x86_64-linux-gnu/libz.a"
  ln -sf /lib/x86_64-linux-gnu/libz.so.1 "$P/usr/lib/x86_64-linux-gnu/libz.so"
fi
# pkg-config sees only the carried packages (libpng, sentencepiece), at their unpacked paths.
export PKG_CONFIG_LIBDIR="$P/usr/lib/x86_64-linux-gnu/pkgconfig:$P/usr/share/pkgconfig"
export PKG_CONFIG_SYSROOT_DIR="$P"
TORCH_CMAKE=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
configure() {  # src build [cmake args...]
  local src=$1 build=$2
  shift 2
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_PREFIX_PATH="$TORCH_CMAKE;$P/usr" \
    -DBoost_INCLUDE_DIR="$P/usr/include" "$@"
}
