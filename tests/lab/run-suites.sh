#!/usr/bin/env bash
# Runs ferrolb-tests' lab suites (one test binary each, named as arguments) E2E_JOBS at a time (default 2), taken
# in the order given: list the longest first so the lanes end together. A lab spends most of its time waiting
# (one lab keeps this 2-core machine 5-25 % busy), so two suites at once halve the wall time; inside a suite the
# labs still run one at a time (tests/src/harness.rs, one_lab_at_a_time), and lab names differ between suites.
# Each suite's output is printed whole when it ends, so blocks never interleave and .ci/run can still sum the
# "test result" lines; a line says when each suite starts and how long it took. Every suite runs even when one
# fails (as cargo's --no-fail-fast); the exit status is 1 if any failed.
set -uo pipefail
cargo="${CARGO:-cargo}"
jobs="${E2E_JOBS:-2}"
[ "$#" -gt 0 ] || { echo "usage: $0 SUITE..." >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# Build them all first: the lanes then only run binaries (cargo holds its build lock only while it builds).
args=()
for suite in "$@"; do args+=(--test "$suite"); done
"$cargo" test -p ferrolb-tests --no-run "${args[@]}" || exit 1
export cargo out
started=$(date +%s)
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c '
  suite="$1"; start=$(date +%s)
  echo "e2e: $suite started"
  "$cargo" test -p ferrolb-tests --test "$suite" >"$out/$suite.log" 2>&1
  rc=$?
  [ "$rc" = 0 ] && verdict=passed || { verdict=FAILED; touch "$out/failed-$suite"; }
  { flock 9; cat "$out/$suite.log"; echo "e2e: $suite $verdict in $(( $(date +%s) - start )) s"; } 9>"$out/print.lock"
' _ {}
failed=$(cd "$out" && for f in failed-*; do [ -e "$f" ] && echo "${f#failed-}"; done | tr '\n' ' ')
echo "e2e: $# suites in $(( $(date +%s) - started )) s, $jobs at a time"
if [ -n "$failed" ]; then
  echo "e2e: failed: $failed"
  exit 1
fi
