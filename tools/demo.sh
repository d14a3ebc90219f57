#!/usr/bin/env bash
# Command (a) of the README: install what is missing, build, and run a
# local demonstration on 127.0.0.1. It finishes by itself and leaves
# nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/install-deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
ninja -C build

PYTHONPATH="build/proto:test/integration" REFERRALD="build/broker/referrald" \
  REFERRALCTL="build/tools/referralctl" REFERRAL_DESK="build/tools/referral-desk" \
  REFERRAL_TRACE="build/tools/referral-trace" REFERRAL_DEMO_OUT="build" \
  PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 tools/demo.py
