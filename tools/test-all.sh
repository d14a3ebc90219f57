#!/usr/bin/env bash
# Command (b) of the README: install what is missing, build with
# AddressSanitizer and UndefinedBehaviorSanitizer, run every test suite
# (unit, integration, fault, security, fuzz; never bench), then build the
# fuzz targets with clang's libFuzzer (protobuf-c's parser instrumented too,
# from Debian's source package: tools/protobuf-c-source.sh) and fuzz each
# for a fixed short run,
# then compile (no tests) optimised release builds with GCC and with clang,
# warnings as errors, each in its own build directory. It prints
# "N skipped" and then, as its very last line, "N passed, N failed": the
# tests counted from both of meson's test logs, plus one passed or failed
# per release build. Exit status: 0 when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh

builddir=build-test
if [ ! -f "$builddir/build.ninja" ]; then
  meson setup "$builddir" -Db_sanitize=address,undefined -Db_lundef=false \
    -Dbuildtype=debug >/dev/null
fi
ninja -C "$builddir"

# Sanitizer findings fail the test that triggers them.
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:strict_string_checks=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

status=0
meson test -C "$builddir" --no-rebuild --print-errorlogs --num-processes 2 \
  --suite unit --suite integration --suite fault --suite security --suite fuzz \
  || status=$?

# libFuzzer: each decoder of untrusted bytes, a fixed short run from its
# seed corpus (test/fuzz/meson.build), with protobuf-c's parser built from
# Debian's source package so the fuzzer steers inside it too. Without the
# source (no network to the mirror), the targets use the system's library
# and the script says so.
fuzzdir=build-fuzz
pbc_opt=-Dprotobuf_c_source=
if pbc_src=$(bash tools/protobuf-c-source.sh build-protobuf-c-src); then
  pbc_opt="-Dprotobuf_c_source=$pbc_src"
else
  echo "NOTE: protobuf-c's source package is unavailable: fuzzing without coverage inside protobuf-c" >&2
fi
if [ ! -f "$fuzzdir/build.ninja" ]; then
  CC=clang meson setup "$fuzzdir" -Dfuzz_engine=libfuzzer -Db_lundef=false \
    -Dbuildtype=debug "$pbc_opt" >/dev/null
else
  meson configure "$fuzzdir" "$pbc_opt" >/dev/null
fi
# A build that fails counts as one failed check (its tests cannot run) and
# the script goes on, so the closing line is always printed.
builds_passed=0
builds_failed=0
logs=("$builddir/meson-logs/testlog.json")
if ninja -C "$fuzzdir"; then
  meson test -C "$fuzzdir" --no-rebuild --print-errorlogs --num-processes 2 --suite fuzz \
    || status=$?
  logs+=("$fuzzdir/meson-logs/testlog.json")
else
  echo "libFuzzer build FAILED" >&2
  builds_failed=$((builds_failed + 1))
  status=1
fi

# Release builds: -O3 brings warnings (e.g. -Wnull-dereference) that debug
# builds do not; compile only, each counted as one passed or failed check.
for cc in gcc clang; do
  reldir="build-release-$cc"
  if { [ -f "$reldir/build.ninja" ] ||
       CC="$cc" meson setup "$reldir" -Dbuildtype=release >/dev/null; } &&
     ninja -C "$reldir"; then
    builds_passed=$((builds_passed + 1))
  else
    echo "release build with $cc FAILED" >&2
    builds_failed=$((builds_failed + 1))
    status=1
  fi
done

python3 - "$builds_passed" "$builds_failed" "${logs[@]}" <<'PY'
import json, sys
passed, failed, skipped = int(sys.argv[1]), int(sys.argv[2]), 0
for path in sys.argv[3:]:
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line).get("result")
            if r in ("OK", "EXPECTEDFAIL"):
                passed += 1
            elif r == "SKIP":
                skipped += 1
            else:
                failed += 1
print(f"{skipped} skipped")
print(f"{passed} passed, {failed} failed")
PY
exit "$status"
