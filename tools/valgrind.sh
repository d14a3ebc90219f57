#!/usr/bin/env bash
# Valgrind memcheck on the integration suite, by hand (never in CI: it is
# slow). See --help, and docs/testing.md ("Valgrind") for the last figures.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: tools/valgrind.sh [OPTIONS] [SCRIPT|TEST ...]

Builds a plain debug tree (no sanitizers: valgrind cannot run them) and
runs integration tests one at a time, with every C program of the build
that a test starts (referrald, referralctl, referral-desk, referral-trace,
the C test agents) under

  valgrind --tool=memcheck --error-exitcode=99 --leak-check=full
           --errors-for-leak-kinds=definite

through the harness's REFERRAL_WRAP (test/integration/harness.py). Python
never runs under valgrind. Each process writes its report to
BUILD/valgrind-logs/TEST/vg.PID.log. A test fails when meson says so (a
process that exited 99 fails every test that checks exit codes), or when
any of its reports counts errors (ERROR SUMMARY above 0, or, for a process
killed before its summary, an error record).

Arguments select tests: a script name (test_library) takes all its tests,
anything else is a test name. Without any, the whole 'integration' suite.

Options:
  --build DIR             build folder (default: build-valgrind)
  --suite NAME            meson suite to select from (default: integration)
  --timeout-multiplier N  for meson's per-test timeouts (default: 10)
  --list                  print the selected tests and exit
  -h, --help              this text

Exit status: 0 when every selected test passed with clean reports; 1
otherwise; 2 on a usage error. Runs under nice -n 10, one test at a time.

Example (the subset of docs/testing.md):
  tools/valgrind.sh test_library test_delivery test_federation \
      test_escalation test_admin test_trace
EOF
}

builddir=build-valgrind
suite=integration
multiplier=10
list_only=0
selectors=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --build) builddir=${2:?--build needs a folder}; shift 2 ;;
    --suite) suite=${2:?--suite needs a name}; shift 2 ;;
    --timeout-multiplier) multiplier=${2:?--timeout-multiplier needs a number}; shift 2 ;;
    --list) list_only=1; shift ;;
    -*) echo "valgrind.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) selectors+=("$1"); shift ;;
  esac
done

if ! command -v valgrind >/dev/null; then
  echo "valgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2
  exit 1
fi

if [ ! -f "$builddir/build.ninja" ]; then
  nice -n 10 meson setup "$builddir" -Dbuildtype=debug -Db_sanitize=none >/dev/null
fi
nice -n 10 ninja -C "$builddir" -j2

# The selected tests' names, in meson's order, from its introspection.
mapfile -t tests < <(meson introspect "$builddir" --tests | python3 -c '
import json, os, sys
suite, selectors = sys.argv[1], set(sys.argv[2:])
for t in json.load(sys.stdin):
    if not any(s.split(":")[-1] == suite for s in t["suite"]):
        continue
    script = os.path.splitext(os.path.basename(t["cmd"][1]))[0] if len(t["cmd"]) > 1 else ""
    if not selectors or t["name"] in selectors or script in selectors:
        print(t["name"])
' "$suite" ${selectors[@]+"${selectors[@]}"})
if [ ${#tests[@]} -eq 0 ]; then
  echo "valgrind.sh: no test of suite $suite matches ${selectors[*]:-anything}" >&2
  exit 2
fi
if [ "$list_only" = 1 ]; then
  printf '%s\n' "${tests[@]}"
  exit 0
fi

# Read the reports of one test's folder: print "ERRORS PROCESSES KILLED
# DEFINITE INDIRECT POSSIBLE REACHABLE" (bytes lost or still reachable at
# exit) and, on stderr, every report with errors.
scan_reports() {
  python3 - "$1" <<'PY'
import glob, re, sys
ERROR_RECORD = re.compile(r"^==\d+== (Invalid (read|write|free)|Conditional jump|Use of uninit"
                          r"|Syscall param|Mismatched free|Source and destination overlap"
                          r"|Argument '.*' of function .* has a fishy value)", re.M)
def lost(kind, text):
    return sum(int(m.replace(",", "")) for m in re.findall(kind + r": ([\d,]+) bytes", text))
errors = processes = killed = definite = indirect = possible = reachable = 0
for path in sorted(glob.glob(sys.argv[1] + "/vg.*.log")):
    with open(path, errors="replace") as f:
        text = f.read()
    processes += 1
    summary = re.search(r"ERROR SUMMARY: ([\d,]+) errors", text)
    if summary:
        n = int(summary.group(1).replace(",", ""))
    else:
        killed += 1
        n = len(ERROR_RECORD.findall(text))
    if n:
        print(f"--- {path}: {n} errors\n{text}", file=sys.stderr)
    errors += n
    definite += lost("definitely lost", text)
    indirect += lost("indirectly lost", text)
    possible += lost("possibly lost", text)
    reachable += lost("still reachable", text)
print(errors, processes, killed, definite, indirect, possible, reachable)
PY
}

logroot="$builddir/valgrind-logs"
rm -rf "$logroot"
passed=0
failed=0
total_errors=0
total_processes=0
total_definite=0
total_indirect=0
total_possible=0
total_reachable=0
failed_names=()
start_all=$SECONDS
for name in "${tests[@]}"; do
  logs="$(pwd)/$logroot/$name"
  mkdir -p "$logs"
  printf -v logfile '%q' "--log-file=$logs/vg.%p.log"   # the harness splits it as a shell would
  export REFERRAL_WRAP="valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \
--errors-for-leak-kinds=definite --num-callers=30 $logfile"
  start=$SECONDS
  rc=0
  nice -n 10 meson test -C "$builddir" --no-rebuild --num-processes 1 \
    --timeout-multiplier "$multiplier" --print-errorlogs "$name" >"$logs/meson.out" 2>&1 || rc=$?
  read -r errors processes killed definite indirect possible reachable \
    < <(scan_reports "$logs" 2>"$logs/errors.txt")
  verdict=ok
  if [ "$rc" != 0 ] || [ "$errors" != 0 ]; then
    verdict=FAIL
    failed=$((failed + 1))
    failed_names+=("$name")
  else
    passed=$((passed + 1))
  fi
  printf '%-4s %s (%ds): meson exit %s, %s processes (%s killed before a summary), %s errors; bytes definitely/indirectly/possibly lost %s/%s/%s, still reachable %s\n' \
    "$verdict" "$name" $((SECONDS - start)) "$rc" "$processes" "$killed" "$errors" \
    "$definite" "$indirect" "$possible" "$reachable"
  total_errors=$((total_errors + errors))
  total_processes=$((total_processes + processes))
  total_definite=$((total_definite + definite))
  total_indirect=$((total_indirect + indirect))
  total_possible=$((total_possible + possible))
  total_reachable=$((total_reachable + reachable))
done
unset REFERRAL_WRAP

echo "${#tests[@]} tests in $(( (SECONDS - start_all) / 60 )) min: $passed passed, $failed failed"
echo "$total_processes processes under memcheck, $total_errors errors; bytes definitely lost $total_definite, indirectly $total_indirect, possibly $total_possible; still reachable $total_reachable"
if [ "$failed" -gt 0 ]; then
  echo "failed: ${failed_names[*]} (reports: $logroot/NAME/, meson output: $logroot/NAME/meson.out, errors: $logroot/NAME/errors.txt)"
  exit 1
fi
