#!/usr/bin/env bash
# Builds CoreDNS (the DNS server of the lab's kube-dns pods, as in a real cluster) from the Go module proxy, once,
# into a cache outside the repo keyed by version; prints the directory holding the `coredns` binary. Static
# (CGO off) and stripped, so the image needs nothing else. Re-running is a no-op when cached.
set -euo pipefail
COREDNS_VERSION="${COREDNS_VERSION:-1.15.0}"
OUT="${FERROLB_CACHE:-/var/cache/ferrolb}/coredns-v$COREDNS_VERSION"
if [ -x "$OUT/coredns" ]; then echo "$OUT"; exit 0; fi
printf '[build-coredns %s] go install github.com/coredns/coredns@v%s (a few minutes, once) into %s\n' \
  "$(date +%H:%M:%S)" "$COREDNS_VERSION" "$OUT" >&2
mkdir -p "$OUT"
CGO_ENABLED=0 GOTOOLCHAIN=local GOBIN="$OUT" go install -trimpath -ldflags='-s -w' \
  "github.com/coredns/coredns@v$COREDNS_VERSION"
echo "$OUT"
