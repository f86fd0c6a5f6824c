#!/usr/bin/env bash
# Packaging test (ctest label `packaging`): builds the DEB and RPM packages of a built tree with
# cpack and checks that
#   - the four packages have the distributions' file names, and the expected files;
#   - wanhost-dev / wanhost-devel depend on exactly this wanhost version, LibTorch is not required;
#   - the .deb and the .rpm of each component hold the same files;
#   - no ELF file has a RUNPATH outside $ORIGIN and no file mentions the build folder;
#   - bin/wanhost refuses a missing or wrong LibTorch with a message naming the expected version;
#   - the example plugin builds against the installed SDK only (the .debs extracted into a staging
#     root; no path into the source or build tree), `wanhost plugins list` shows it next to the
#     built-in plugins (found without any variable), and a short `wanhost run` trains with it;
#   - removing the packages leaves nothing behind: the staging root holds exactly the packages'
#     files (and, in CI as root, `dpkg -i` then `dpkg -r` on the machine leave no file behind).
set -euo pipefail
umask 022

usage() {
  echo "usage: $0 --build-dir DIR --source-dir DIR --work-dir DIR --libtorch DIR --version V-R --torch-version V --generator G" >&2
  exit 2
}
BUILD='' SRC='' WORK='' LIBTORCH='' VERSION='' TORCH_VERSION='' GENERATOR=''
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) BUILD=$2 ;;
    --source-dir) SRC=$2 ;;
    --work-dir) WORK=$2 ;;
    --libtorch) LIBTORCH=$2 ;;
    --version) VERSION=$2 ;;
    --torch-version) TORCH_VERSION=$2 ;;
    --generator) GENERATOR=$2 ;;
    *) usage ;;
  esac
  shift 2 || usage
done
[ -n "$BUILD" ] && [ -n "$SRC" ] && [ -n "$WORK" ] && [ -n "$LIBTORCH" ] && [ -n "$VERSION" ] &&
  [ -n "$TORCH_VERSION" ] && [ -n "$GENERATOR" ] || usage
BUILD=$(cd "$BUILD" && pwd -P)
SRC=$(cd "$SRC" && pwd -P)

# Paths into the build tree and the source tree (this test's own work folder may lie inside the
# build folder, and LibTorch inside the source folder: those do not count).
re_escape() { sed 's/[][\\.*^$+?(){}|]/\\&/g' <<<"$1"; }
BUILD_TREE_RE="$(re_escape "$BUILD")/(bin|lib|sdk|core|plugins|kernels|fmt-shim|packaging)(/|\\b)"
SOURCE_TREE_RE="$(re_escape "$SRC")/(sdk|core|plugins|kernels|packaging)/"

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
die() { echo "FAIL: $*" >&2; exit 1; }
step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }

rm -rf "$WORK"
mkdir -p "$WORK/pkgs"
unset WANHOST_PLUGIN_PATH WANHOST_LIBTORCH

# --- 1. the packages -------------------------------------------------------------------------------
step "cpack (DEB, RPM)"
(cd "$WORK" && cpack --config "$BUILD/CPackConfig.cmake" -B "$WORK/pkgs" >"$WORK/cpack.log" 2>&1) ||
  { tail -n 40 "$WORK/cpack.log" >&2; die "cpack failed (log: $WORK/cpack.log)"; }
deb_arch=$(dpkg --print-architecture)
rpm_arch=$(uname -m)
DEB_RT=$WORK/pkgs/wanhost_${VERSION}_${deb_arch}.deb
DEB_DEV=$WORK/pkgs/wanhost-dev_${VERSION}_${deb_arch}.deb
RPM_RT=$WORK/pkgs/wanhost-${VERSION}.${rpm_arch}.rpm
RPM_DEV=$WORK/pkgs/wanhost-devel-${VERSION}.${rpm_arch}.rpm
for p in "$DEB_RT" "$DEB_DEV" "$RPM_RT" "$RPM_DEV"; do
  [ -f "$p" ] || die "expected package $p; cpack made: $(cd "$WORK/pkgs" && ls -- *.deb *.rpm 2>/dev/null | tr '\n' ' ')"
done
ls -l "$WORK/pkgs"/*.deb "$WORK/pkgs"/*.rpm

# --- 2. file lists ---------------------------------------------------------------------------------
step "file lists (dpkg-deb -c, rpm -qpl)"
# Files and links (no folders) as absolute paths, sorted.
deb_files() { dpkg-deb -c "$1" | awk '$1 !~ /^d/ { p = $6; sub(/^\./, "", p); print p }' | sort; }
deb_dirs() { dpkg-deb -c "$1" | awk '$1 ~ /^d/ { p = $6; sub(/^\./, "", p); sub(/\/$/, "", p); if (p != "") print p }' | sort; }
rpm_files() { rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$1" | awk '$1 !~ /^d/ { print $2 }' | sort; }
deb_files "$DEB_RT" >"$WORK/deb-runtime.txt"
deb_files "$DEB_DEV" >"$WORK/deb-dev.txt"
rpm_files "$RPM_RT" >"$WORK/rpm-runtime.txt"
rpm_files "$RPM_DEV" >"$WORK/rpm-dev.txt"
rpm -qpl "$RPM_RT" >"$WORK/rpm-qpl-runtime.txt"
rpm -qpl "$RPM_DEV" >"$WORK/rpm-qpl-dev.txt"

expect_in() {  # list-file path...
  local list=$1
  shift
  for f in "$@"; do grep -qxF "$f" "$list" || fail "$(basename "$list" .txt): missing $f"; done
}
expect_not_in() {  # list-file regex what
  if grep -E "$2" "$1" >/dev/null; then fail "$(basename "$1" .txt): $3: $(grep -E "$2" "$1" | head -3 | tr '\n' ' ')"; fi
}
for list in "$WORK/deb-runtime.txt" "$WORK/rpm-runtime.txt"; do
  expect_in "$list" /usr/bin/wanhost /usr/lib/wanhost/wanhost /usr/lib/libwanhost.so.1 \
    /usr/lib/libwanhost_sdk.so.2 /usr/lib/libwanhost_kit.so.1 /usr/share/wanhost/default.json /usr/share/doc/wanhost/install.md
  # Every built-in plugin of the build, with its manifest.
  for so in "$BUILD"/plugins/*.so; do
    name=$(basename "$so" .so)
    expect_in "$list" "/usr/lib/wanhost/plugins/$name.so" "/usr/lib/wanhost/plugins/$name.json"
  done
  expect_not_in "$list" '^/usr/include/|\.cmake$|/libwanhost(_sdk|_kit)?\.so$' "development files in the runtime package"
done
for list in "$WORK/deb-dev.txt" "$WORK/rpm-dev.txt"; do
  expect_in "$list" /usr/include/wanhost/plugin.hpp /usr/include/wanhost/abi.hpp /usr/lib/libwanhost_sdk.so \
    /usr/include/wanhost/kit/safetensors.hpp /usr/include/wanhost/kit/parallelism_base.hpp \
    /usr/lib/libwanhost_kit.so \
    /usr/lib/cmake/WanHost/WanHostConfig.cmake /usr/lib/cmake/WanHost/WanHostConfigVersion.cmake \
    /usr/lib/cmake/WanHost/WanHostTargets.cmake /usr/lib/cmake/WanHost/WanHostPlugin.cmake \
    /usr/share/doc/wanhost-dev/example-plugin/CMakeLists.txt
  expect_not_in "$list" '^/usr/bin/|/plugins/|\.so\.[0-9]' "runtime files in the development package"
done
# The same files in both formats.
diff -u "$WORK/deb-runtime.txt" "$WORK/rpm-runtime.txt" >&2 || fail "wanhost .deb and .rpm hold different files"
diff -u "$WORK/deb-dev.txt" "$WORK/rpm-dev.txt" >&2 || fail "wanhost-dev .deb and wanhost-devel .rpm hold different files"
# RPM must not claim the file system's folders.
expect_not_in "$WORK/rpm-qpl-runtime.txt" '^/usr(/bin|/lib|/lib64|/share|/share/doc)?$' "owns a system folder"
expect_not_in "$WORK/rpm-qpl-dev.txt" '^/usr(/include|/lib|/lib/cmake|/share|/share/doc)?$' "owns a system folder"

# --- 3. metadata -----------------------------------------------------------------------------------
step "dependencies"
rt_depends=$(dpkg-deb -f "$DEB_RT" Depends)
dev_depends=$(dpkg-deb -f "$DEB_DEV" Depends)
echo "wanhost Depends: $rt_depends"
echo "wanhost-dev Depends: $dev_depends"
grep -qE '(^|, )libspdlog' <<<"$rt_depends" || fail "wanhost Depends lacks spdlog: $rt_depends"
grep -qE '(^|, )libstdc\+\+6' <<<"$rt_depends" || fail "wanhost Depends lacks libstdc++6: $rt_depends"
if grep -qiE 'torch|c10' <<<"$rt_depends"; then fail "wanhost Depends names LibTorch, which no Debian package provides: $rt_depends"; fi
grep -qE "(^|, )wanhost \(= ${VERSION//./\\.}\)(,|$)" <<<"$dev_depends" || fail "wanhost-dev does not depend on wanhost (= $VERSION): $dev_depends"
rpm_rt_requires=$(rpm -qpR "$RPM_RT" | tr '\n' ' ')
rpm_dev_requires=$(rpm -qpR "$RPM_DEV" | tr '\n' ' ')
echo "wanhost Requires: $rpm_rt_requires"
echo "wanhost-devel Requires: $rpm_dev_requires"
if grep -qiE 'torch|c10' <<<"$rpm_rt_requires"; then fail "the wanhost RPM requires LibTorch libraries: $rpm_rt_requires"; fi
grep -q 'libspdlog' <<<"$rpm_rt_requires" || fail "the wanhost RPM does not require spdlog: $rpm_rt_requires"
grep -qE "(^| )wanhost = ${VERSION//./\\.}( |$)" <<<"$rpm_dev_requires" || fail "wanhost-devel does not require wanhost = $VERSION"
[ "$(rpm -qp --qf '%{NAME} %{VERSION}-%{RELEASE}' "$RPM_DEV")" = "wanhost-devel $VERSION" ] ||
  fail "wanhost-devel RPM name/version: $(rpm -qp --qf '%{NAME} %{VERSION}-%{RELEASE}' "$RPM_DEV")"

# --- 4. the staging root ---------------------------------------------------------------------------
step "extract the .debs into a staging root"
STAGE=$WORK/root
mkdir -p "$STAGE"
dpkg-deb -x "$DEB_RT" "$STAGE"
dpkg-deb -x "$DEB_DEV" "$STAGE"
# Also the .rpm payloads, to look into their files.
RPMROOT=$WORK/rpmroot
mkdir -p "$RPMROOT"
# (rpm2archive comes with Debian's rpm package; cpio may be missing.)
for p in "$RPM_RT" "$RPM_DEV"; do rpm2archive - <"$p" | tar -xzf - -C "$RPMROOT"; done

step "RUNPATHs and build paths"
elf_count=0
while IFS= read -r -d '' f; do
  if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" != '177ELF' ]; then continue; fi
  elf_count=$((elf_count + 1))
  rel=${f#"$STAGE"}
  readelf -d "$f" | { grep -E '\((RPATH|RUNPATH)\)' || true; } | sed -e 's/.*\[\(.*\)\]/\1/' | tr ':' '\n' |
    while IFS= read -r entry; do
      case "$entry" in
        '$ORIGIN' | '$ORIGIN/'*) ;;
        *) echo "$rel: RUNPATH entry '$entry' is not relative to \$ORIGIN" ;;
      esac
    done >>"$WORK/runpath-problems.txt"
done < <(find "$STAGE" -type f -print0)
[ "$elf_count" -ge 6 ] || fail "only $elf_count ELF files in the packages"
if [ -s "$WORK/runpath-problems.txt" ]; then fail "$(cat "$WORK/runpath-problems.txt")"; fi
readelf -d "$STAGE/usr/lib/wanhost/wanhost" | grep -q 'RUNPATH.*\[\$ORIGIN/\.\.\]' ||
  fail "usr/lib/wanhost/wanhost: RUNPATH is not \$ORIGIN/..: $(readelf -d "$STAGE/usr/lib/wanhost/wanhost" | grep -E 'R(UN)?PATH')"
for root in "$STAGE" "$RPMROOT"; do
  if hits=$(grep -rlF "$BUILD" "$root"); then fail "files mention the build folder $BUILD: $hits"; fi
done

# --- 5. the LibTorch check of the launcher ----------------------------------------------------------
step "LibTorch check at start-up"
WANHOST=$STAGE/usr/bin/wanhost
expect_refusal() {  # what libtorch-dir expected-text
  local out rc=0
  out=$(WANHOST_LIBTORCH=$2 "$WANHOST" --version 2>&1) || rc=$?
  [ "$rc" -eq 1 ] || fail "launcher with $1: exit code $rc, expected 1 ($out)"
  grep -qF "$3" <<<"$out" || fail "launcher with $1: message lacks '$3': $out"
  grep -qF "LibTorch $TORCH_VERSION" <<<"$out" || fail "launcher with $1: message does not name LibTorch $TORCH_VERSION: $out"
  echo "  $1: $(head -n 1 <<<"$out")"
}
expect_refusal "a missing folder" "$WORK/no-libtorch" "$WORK/no-libtorch (from WANHOST_LIBTORCH) does not exist"
FAKE=$WORK/fake-libtorch
mkdir -p "$FAKE/lib"
for lib in libc10.so libtorch_cpu.so libtorch.so libtorch_cuda.so; do : >"$FAKE/lib/$lib"; done
echo "2.10.0+cpu" >"$FAKE/build-version"
expect_refusal "another version" "$FAKE" "is version 2.10.0+cpu, not $TORCH_VERSION"
version_out=$(WANHOST_LIBTORCH=$LIBTORCH "$WANHOST" --version 2>&1) || fail "wanhost --version: $version_out"
grep -qF "LibTorch $TORCH_VERSION" <<<"$version_out" || fail "wanhost --version: $version_out"
echo "  $version_out"

# --- 6. the example plugin against the installed SDK only -------------------------------------------
step "the CMake package refuses another SDK major"
PROBE=$WORK/sdk-major-probe
mkdir -p "$PROBE"
printf 'cmake_minimum_required(VERSION 3.25)\nproject(probe LANGUAGES NONE)\nfind_package(WanHost 3 REQUIRED)\n' >"$PROBE/CMakeLists.txt"
if probe_out=$(cmake -S "$PROBE" -B "$PROBE/build" -DCMAKE_PREFIX_PATH="$STAGE/usr" 2>&1); then
  fail "find_package(WanHost 3) accepted the SDK"
elif ! grep -qF 'version: 2.' <<<"$probe_out"; then
  fail "find_package(WanHost 3) failed without naming the SDK version: $probe_out"
fi

step "build the example plugin against the staged SDK"
EXAMPLE_SRC=$STAGE/usr/share/doc/wanhost-dev/example-plugin
EXAMPLE=$WORK/example-build
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$EXAMPLE_SRC" -B "$EXAMPLE" -G "$GENERATOR" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$STAGE/usr;$LIBTORCH" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF \
  -DCMAKE_INSTALL_PREFIX=/usr >"$WORK/example-configure.log" 2>&1 ||
  { tail -n 30 "$WORK/example-configure.log" >&2; die "configuring the example plugin failed"; }
grep -q "^WanHost_DIR:PATH=$STAGE/usr/lib/cmake/WanHost$" "$EXAMPLE/CMakeCache.txt" ||
  fail "the example did not use the staged SDK: $(grep '^WanHost_DIR' "$EXAMPLE/CMakeCache.txt")"
cmake --build "$EXAMPLE" >"$WORK/example-build.log" 2>&1 ||
  { tail -n 30 "$WORK/example-build.log" >&2; die "building the example plugin failed"; }
for f in "$EXAMPLE"/build.ninja "$EXAMPLE"/Makefile "$EXAMPLE"/CMakeFiles/*.dir/flags.make; do
  [ -f "$f" ] || continue
  if hits=$(grep -oE "$BUILD_TREE_RE|$SOURCE_TREE_RE" "$f"); then
    fail "the example build uses the wanhost tree ($f): $(sort -u <<<"$hits" | head -3 | tr '\n' ' ')"
  fi
done
[ -f "$EXAMPLE/uniform_flow.so" ] && [ -f "$EXAMPLE/uniform_flow.json" ] || die "no uniform_flow.so + .json in $EXAMPLE"
# Its install rule targets the folder the packaged wanhost searches.
DESTDIR=$WORK/example-install cmake --install "$EXAMPLE" >/dev/null
[ -f "$WORK/example-install/usr/lib/wanhost/plugins/uniform_flow.so" ] &&
  [ -f "$WORK/example-install/usr/lib/wanhost/plugins/uniform_flow.json" ] ||
  fail "cmake --install of the example did not put uniform_flow.{so,json} into /usr/lib/wanhost/plugins"

step "wanhost plugins list"
export WANHOST_LIBTORCH=$LIBTORCH
list_out=$("$WANHOST" --plugin-dir "$EXAMPLE" plugins list 2>&1) || fail "wanhost plugins list: $list_out"
echo "$list_out"
grep -qE '(^|[[:space:]])uniform_flow([[:space:]]|$)' <<<"$list_out" || fail "plugins list does not show uniform_flow"
for so in "$BUILD"/plugins/*.so; do
  name=$(basename "$so" .so)
  grep -qE "(^|[[:space:]])$name([[:space:]]|$)" <<<"$list_out" || fail "plugins list does not show the built-in $name"
done
grep -qF "$STAGE/usr/lib/wanhost/plugins" <<<"$list_out" ||
  fail "plugins list does not name the built-in folder $STAGE/usr/lib/wanhost/plugins"
if grep -qE "$BUILD_TREE_RE" <<<"$list_out"; then fail "plugins list mentions the build tree"; fi

step "a short run with the example scheduler"
RUN=$WORK/run
run_rc=0
(cd "$WORK" && "$WANHOST" --plugin-dir "$EXAMPLE" run --out "$RUN" --plugins uniform_flow \
  --set stages.0.steps=2 --set stages.0.global_batch=2 --set stages.0.micro_batch=2 \
  --set stages.1.steps=1 --set stages.1.global_batch=2 --set stages.1.micro_batch=2 \
  --set scheduler.uniform_flow.min_sigma=0.2) >"$WORK/run.log" 2>&1 || run_rc=$?
if [ "$run_rc" -ne 0 ]; then
  tail -n 30 "$WORK/run.log" >&2
  fail "wanhost run with uniform_flow exited $run_rc"
else
  grep -qF "uniform_flow 1.0.0: training sigma uniform in [0.2, 1]" "$WORK/run.log" ||
    fail "the run log does not show the uniform_flow scheduler at work"
  python3 - "$RUN" <<'EOF' || fail "the run folder does not show a run with uniform_flow"
import json, sys
run = sys.argv[1]
cfg = json.load(open(f"{run}/config.resolved.json"))
assert cfg["scheduler"]["plugin"] == "uniform_flow", cfg["scheduler"]
assert cfg["scheduler"]["uniform_flow"]["min_sigma"] == 0.2, cfg["scheduler"]
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
losses = [m["loss"] for m in steps if "loss" in m]
assert len(losses) >= 3 and all(x == x and x > 0 for x in losses), steps
print(f"  run: scheduler {cfg['scheduler']['plugin']}, losses {losses}")
EOF
fi

# --- 7. uninstalling ------------------------------------------------------------------------------
step "nothing left behind"
# Everything in the staging root belongs to one of the two packages ...
(cd "$STAGE" && find . -mindepth 1 | sed 's/^\.//' | sort) >"$WORK/staged.txt"
{ cat "$WORK/deb-runtime.txt" "$WORK/deb-dev.txt"; deb_dirs "$DEB_RT"; deb_dirs "$DEB_DEV"; } | sort -u >"$WORK/packaged.txt"
diff -u "$WORK/packaged.txt" "$WORK/staged.txt" >&2 || fail "the staging root differs from the packages' file lists"
# ... and removing the packages' files, then their folders as they empty, leaves nothing.
cat "$WORK/deb-runtime.txt" "$WORK/deb-dev.txt" | while IFS= read -r f; do rm -f -- "$STAGE$f"; done
{ deb_dirs "$DEB_RT"; deb_dirs "$DEB_DEV"; } | sort -u -r | while IFS= read -r d; do rmdir -- "$STAGE$d" 2>/dev/null || true; done
left=$(cd "$STAGE" && find . -mindepth 1 | head -5)
[ -z "$left" ] || fail "left behind in the staging root: $left"

# In CI (root, CI=true) also on the machine itself: dpkg -i, run, dpkg -r, nothing left.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
if [ "${CI:-}" = true ] && [ "$(id -u)" -eq 0 ] && ! installed wanhost && ! installed wanhost-dev; then
  step "dpkg -i / dpkg -r on this machine (CI)"
  cleanup() { dpkg -r wanhost-dev wanhost >/dev/null 2>&1 || true; }
  trap cleanup EXIT
  dpkg -i "$DEB_RT" "$DEB_DEV" || fail "dpkg -i failed"
  out=$(/usr/bin/wanhost plugins list 2>&1) || fail "installed wanhost plugins list: $out"
  for so in "$BUILD"/plugins/*.so; do
    name=$(basename "$so" .so)
    grep -qE "(^|[[:space:]])$name([[:space:]]|$)" <<<"$out" || fail "installed wanhost does not list $name"
  done
  dpkg -r wanhost-dev wanhost || fail "dpkg -r failed"
  trap - EXIT
  cat "$WORK/deb-runtime.txt" "$WORK/deb-dev.txt" | while IFS= read -r f; do
    if [ -e "$f" ] || [ -L "$f" ]; then echo "$f"; fi
  done >"$WORK/left-on-machine.txt"
  if [ -s "$WORK/left-on-machine.txt" ]; then fail "dpkg -r left files: $(head -5 "$WORK/left-on-machine.txt")"; fi
  for d in /usr/lib/wanhost /usr/include/wanhost /usr/lib/cmake/WanHost /usr/share/wanhost; do
    if [ -e "$d" ]; then fail "dpkg -r left $d"; fi
  done
fi

step "done"
if [ "$failures" -gt 0 ]; then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all packaging checks passed"
