#!/usr/bin/env bash
# Builds the speaker of an older commit (default 7c38fcf, the last one whose liveness format was FLB2, before the
# ring of watchers) once, into a cache outside the repo keyed by commit, for the rolling-upgrade test
# (tests/tests/rolling_upgrade.rs, `make upgrade-test`). Prints the binary's path; re-running is a no-op when
# cached. Needs this repository's git history (the commit is taken with `git archive`, no work tree is added).
# A debug build, as the lab suites start the debug binaries of target/debug beside it.
set -euo pipefail
COMMIT="${FERROLB_OLD_COMMIT:-7c38fcf}"
CACHE_ROOT="${FERROLB_CACHE:-/var/cache/ferrolb}"
OUT="$CACHE_ROOT/old-speaker-$COMMIT"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
step() { printf '[build-old-speaker %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ -x "$OUT/ferrolb-speaker" ]; then echo "$OUT/ferrolb-speaker"; exit 0; fi
git -C "$REPO" cat-file -e "$COMMIT^{commit}" 2>/dev/null || {
  step "commit $COMMIT is not in $REPO (a shallow clone?): fetch the history first"; exit 1; }
mkdir -p "$OUT"
rm -rf "$OUT/src"
mkdir "$OUT/src"
step "sources of $COMMIT into $OUT/src"
git -C "$REPO" archive "$COMMIT" | tar -x -C "$OUT/src"
step "cargo build -p ferrolb-speaker (debug; its own target dir, $OUT/target; minutes the first time)"
(cd "$OUT/src" && CARGO_TARGET_DIR="$OUT/target" cargo build --locked -p ferrolb-speaker --bin ferrolb-speaker)
cp "$OUT/target/debug/ferrolb-speaker" "$OUT/ferrolb-speaker.tmp"
mv "$OUT/ferrolb-speaker.tmp" "$OUT/ferrolb-speaker"
echo "$OUT/ferrolb-speaker"
