#!/usr/bin/env bash
# Builds the lab's control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler), the node
# binaries (kubelet, kube-proxy) and helm from the Go module proxy, once, into a cache outside the repo keyed by version. Re-running is a no-op when cached.
# Why a wrapper module: k8s.io/kubernetes points its staging modules at ./staging via `replace`, which Go
# ignores in dependencies, so we generate matching replace lines from the tag's own go.mod.
set -euo pipefail
K8S_VERSION="${K8S_VERSION:-1.35.4}"
HELM_VERSION="${HELM_VERSION:-3.21.4}"
CACHE_ROOT="${FERROLB_CACHE:-/var/cache/ferrolb}"
OUT="$CACHE_ROOT/k8s-v$K8S_VERSION-helm-v$HELM_VERSION"
MINOR="${K8S_VERSION#1.}"; MINOR="${MINOR%%.*}"
STAGING="v0.${K8S_VERSION#1.}"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
step() { printf '[build-control-plane %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

K8S_BINS="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"
cached=yes
for bin in $K8S_BINS etcd helm; do [ -x "$OUT/$bin" ] || cached=no; done
if [ "$cached" = yes ]; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT"
WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
step "wrapper module for k8s v$K8S_VERSION in $WORK (output: $OUT)"
cat > go.mod <<GOMOD
module local/ferrolb-control-plane

go 1.26
GOMOD
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
GO
step "downloading k8s.io/kubernetes@v$K8S_VERSION go.mod"
MODFILE="$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
[ -f "$MODFILE" ] || { step "could not fetch k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/src/.*#\1#p' "$MODFILE"); do
  go mod edit -replace="$m=$m@$STAGING"
done
go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
step "go mod tidy (downloads the module graph; minutes on a cold cache)"
go mod tidy
LDF="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
done
for bin in $K8S_BINS; do
  [ -x "$OUT/$bin" ] && continue
  step "go build $bin (the longest steps)"
  go build -trimpath -tags selinux,notest -ldflags "$LDF" -o "$OUT/$bin.tmp" "k8s.io/kubernetes/cmd/$bin"
  mv "$OUT/$bin.tmp" "$OUT/$bin"
done
if [ ! -x "$OUT/etcd" ]; then
step "go build etcd (same module graph, so the version Kubernetes is tested with)"
go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
mv "$OUT/etcd.tmp" "$OUT/etcd"
fi
if [ ! -x "$OUT/helm" ]; then
step "go install helm v$HELM_VERSION (own module graph)"
(cd / && GOBIN="$WORK/bin" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
  "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION")
mv "$WORK/bin/helm" "$OUT/helm"
fi
step "done: $("$OUT/kube-apiserver" --version), $("$OUT/helm" version --short)"
echo "$OUT"
