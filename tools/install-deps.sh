#!/usr/bin/env bash
# Install, from Debian's packages, whatever this project needs and the
# machine lacks. Idempotent: when everything is present it only checks
# (about a second) and touches nothing. Needs root (or sudo) to install.
set -euo pipefail

packages=(
  build-essential meson ninja-build pkg-config clang libclang-rt-14-dev
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler scdoc libmicrohttpd-dev
  liblmdb-dev lmdb-utils libssl-dev libsodium-dev
  libinih-dev libjson-c-dev libcmocka-dev
  python3 python3-zmq python3-protobuf python3-cryptography protobuf-compiler
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
