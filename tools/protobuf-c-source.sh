#!/usr/bin/env bash
# Fetch and unpack Debian's source package of the protobuf-c the machine
# has installed (libprotobuf-c-dev), so the libFuzzer build can compile
# protobuf-c's parser with the fuzzer's coverage (meson option
# protobuf_c_source; docs/testing.md, "Fuzzing inside protobuf-c").
#
#   tools/protobuf-c-source.sh DIR
#
# Prints the unpacked source tree (DIR/protobuf-c-VERSION) on stdout.
# Idempotent: an already unpacked tree is reused without a download.
# The machine's apt configuration is left alone: the deb-src index is read
# into DIR/apt, from the mirror the machine already uses for bookworm's
# binaries, and checked against the archive's signed Release file as apt
# always does. Needs no root. Exit status 1 when anything is missing.
set -euo pipefail

case "${1:-}" in
  -h|--help|"")
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    [ -n "${1:-}" ] && exit 0 || exit 1 ;;
esac
dir=$1

version=$(dpkg-query -W -f='${source:Version}' libprotobuf-c-dev 2>/dev/null) || {
  echo "protobuf-c-source: libprotobuf-c-dev is not installed (tools/install-deps.sh)" >&2
  exit 1
}
upstream=${version%-*}
upstream=${upstream#*:}
tree="$dir/protobuf-c-$upstream"
if [ -f "$tree/protobuf-c/protobuf-c.c" ]; then
  echo "$tree"
  exit 0
fi
command -v dpkg-source >/dev/null || {
  echo "protobuf-c-source: dpkg-source is missing (package dpkg-dev)" >&2
  exit 1
}

. /etc/os-release
mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$dir/apt/lists/partial"
echo "deb-src $mirror $VERSION_CODENAME main" > "$dir/apt/sources.list"
apt_opts=(-q -o "Dir::Etc::SourceList=$(realpath "$dir/apt/sources.list")"
  -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$(realpath "$dir/apt/lists")"
  -o APT::Sandbox::User=root)
if ! apt-get "${apt_opts[@]}" update >"$dir/apt/update.log" 2>&1; then
  echo "protobuf-c-source: could not read $mirror's source index (see $dir/apt/update.log)" >&2
  exit 1
fi
if ! (cd "$dir" && apt-get "${apt_opts[@]}" source "protobuf-c=$version") >"$dir/apt/source.log" 2>&1; then
  echo "protobuf-c-source: could not fetch protobuf-c $version (see $dir/apt/source.log)" >&2
  exit 1
fi
[ -f "$tree/protobuf-c/protobuf-c.c" ] || {
  echo "protobuf-c-source: $tree/protobuf-c/protobuf-c.c missing after unpacking" >&2
  exit 1
}
echo "$tree"
