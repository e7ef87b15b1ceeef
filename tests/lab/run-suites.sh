#!/usr/bin/env bash
# Runs ferrolb-tests' lab suites (one test binary each, named as arguments) E2E_JOBS at a time (default 2), taken
# in the order given: list the longest first so the lanes end together. A lab spends most of its time waiting
# (one lab keeps this 2-core machine 5-25 % busy), so two suites at once halve the wall time; inside a suite the
# labs still run one at a time (tests/src/harness.rs, one_lab_at_a_time), and lab names differ between suites.
# Each suite's output is printed whole when it ends, so blocks never interleave and .ci/run can still sum the
# "test result" lines; a line says when each suite starts and how long it took. A suite still running after
# E2E_SUITE_TIMEOUT seconds (default 1200) is stopped and counts as failed, so a hung suite still shows its output.
# Every suite runs even when one fails (as cargo's --no-fail-fast); the exit status is 1 unless all passed.
set -uo pipefail
cargo="${CARGO:-cargo}"
jobs="${E2E_JOBS:-2}"
suite_timeout="${E2E_SUITE_TIMEOUT:-1200}"
[ "$#" -gt 0 ] || { echo "usage: $0 SUITE..." >&2; exit 2; }
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "E2E_JOBS must be a positive number, not '$jobs'" >&2; exit 2; }
[[ "$suite_timeout" =~ ^[1-9][0-9]*$ ]] || { echo "E2E_SUITE_TIMEOUT must be seconds, not '$suite_timeout'" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# Build them all first: the lanes then only run binaries (cargo holds its build lock only while it builds).
args=()
for suite in "$@"; do args+=(--test "$suite"); done
# shellcheck disable=SC2086 # CARGO may carry flags, as make passes it
$cargo test -p ferrolb-tests --no-run "${args[@]}" || exit 1
export cargo out suite_timeout
started=$(date +%s)
printf '%s\n' "$@" | xargs -d '\n' -P "$jobs" -I{} bash -c '
  suite="$1"; start=$(date +%s)
  { flock 9; echo "e2e: $suite started"; } 9>"$out/print.lock"
  # SIGINT first, so the test binary (and the labs it holds) can clean up; KILL only if it does not.
  timeout --signal=INT --kill-after=60 "$suite_timeout" $cargo test -p ferrolb-tests --test "$suite" >"$out/$suite.log" 2>&1
  rc=$?
  case "$rc" in
    0) verdict=passed ;;
    124) verdict="FAILED (still running after $suite_timeout s, stopped)" ;;
    *) verdict=FAILED ;;
  esac
  [ "$rc" = 0 ] || touch "$out/failed-$suite"
  touch "$out/ran-$suite"
  { flock 9; cat "$out/$suite.log"; echo "e2e: $suite $verdict in $(( $(date +%s) - start )) s"; } 9>"$out/print.lock"
  exit 0
' _ {}
xargs_status=$?
failed=$(cd "$out" && for f in failed-*; do [ -e "$f" ] && printf '%s ' "${f#failed-}"; done)
missing=$(for suite in "$@"; do [ -e "$out/ran-$suite" ] || printf '%s ' "$suite"; done)
echo "e2e: $# suites in $(( $(date +%s) - started )) s, $jobs at a time"
status=0
if [ "$xargs_status" != 0 ]; then echo "e2e: xargs exited $xargs_status"; status=1; fi
if [ -n "$missing" ]; then echo "e2e: never ran: $missing"; status=1; fi
if [ -n "$failed" ]; then echo "e2e: failed: $failed"; status=1; fi
exit "$status"
