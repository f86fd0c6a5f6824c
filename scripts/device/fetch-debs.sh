#!/usr/bin/env bash
# Downloads (on the development machine) the Debian packages scripts/device/build.sh unpacks on
# the GPU machine into .deps/ (git-ignored; name it in the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps && cd .deps
apt-get download libboost1.74-dev libboost-dev nlohmann-json3-dev libcli11-dev libspdlog-dev \
  libspdlog1.10 libfmt-dev libfmt9 libgtest-dev libpng-dev libpng16-16 zlib1g-dev \
  libsentencepiece-dev libsentencepiece0
