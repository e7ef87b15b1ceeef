#!/usr/bin/env bash
# `make images`: builds ferrolb's container images on this machine with no Docker daemon and no registry.
#
# Binaries are static (glibc with crt-static: the musl target cannot be installed without rustup's own
# servers), images are assembled from an empty base by umoci (OCI layout, one layer per binary) and written by
# skopeo as docker-archive tarballs, the format `ctr images import`, `kind load image-archive`,
# `minikube image load` and `docker load` all accept. umoci + skopeo come from Debian; buildah would need a
# containers/storage root, crane a Go build and a registry for `mutate`.
# The layout matches the Dockerfile's targets: entrypoint /ferrolb-<name>, both as 65532:65532. The speaker's
# binary carries the file capability cap_net_raw=ep: Kubernetes gives a non-root container's capabilities to no
# ambient set, so execve would drop an added NET_RAW; the file capability keeps it, bounded by what the pod's
# securityContext adds (docs/design.md §9.1).
#
# Also builds the lab's pause image (the pod sandbox; no registry to pull registry.k8s.io/pause from), its web
# image (Debian's static busybox: httpd on port 8000, answering with the pod's name and the client's address) and
# its DNS image (CoreDNS from the Go module proxy, images/build-coredns.sh, serving a small zone).
# Output: target/images/*.tar (prints each image's size), and the static binaries in target/$TARGET/release
# (ferrolb-lab too, for `make demo` and `make lab-up`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${IMAGES_DIR:-target/images}"
TARGET=x86_64-unknown-linux-gnu
VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ferrolb/Chart.yaml)"
step() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in umoci skopeo cc setcap go readelf; do
  command -v "$tool" >/dev/null || { echo "images: $tool missing (apt-get install umoci skopeo gcc libcap2-bin; make deps does it)" >&2; exit 1; }
done

step "cargo build --release (static, $TARGET) ferrolb-controller ferrolb-speaker ferrolb-lab"
# --target keeps these flags off build scripts and the host build in target/release. ferrolb-lab is built in the
# same static build so the demo's lab runs it, and the controller and speaker beside it, without a second
# (dynamic) release build of the workspace.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked -q --target "$TARGET" -p ferrolb-controller -p ferrolb-speaker \
  -p ferrolb-tests --bins
BIN="target/$TARGET/release"

WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/rootfs"
step "pause (static C)"
cc -static -Os -s -o "$WORK/pause" images/pause.c

# image NAME TAG FILE ENTRYPOINT USER PORT...: one-layer image holding FILE at /ENTRYPOINT.
image() {
  local name="$1" tag="$2" file="$3" entry="$4" user="$5"; shift 5
  local layout="$WORK/oci-${name//\//-}" archive="$OUT/${name//\//-}-$tag.tar"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" --history.created_by "images/build.sh: $entry" "$file" "$entry"
  local config=(--image "$layout:$tag" --os linux --architecture amd64 --config.entrypoint "$entry"
                --config.user "$user" --author ferrolb --history.created_by "images/build.sh: config")
  for port in "$@"; do config+=(--config.exposedports "$port"); done
  umoci config "${config[@]}"
  umoci gc --layout "$layout"
  rm -f "$archive"
  skopeo copy --quiet "oci:$layout:$tag" "docker-archive:$archive:$name:$tag"
  printf '%-32s %8s  %s\n' "$name:$tag" "$(du -h "$archive" | cut -f1)" "$archive"
}

# The release profile keeps line tables for backtraces on this machine; images ship without symbols.
strip -o "$WORK/ferrolb-controller" "$BIN/ferrolb-controller"
strip -o "$WORK/ferrolb-speaker" "$BIN/ferrolb-speaker"
# umoci records the extended attribute security.capability in the layer (a PAX record); containerd restores it.
setcap cap_net_raw=ep "$WORK/ferrolb-speaker"
image ferrolb/controller "$VERSION" "$WORK/ferrolb-controller" /ferrolb-controller 65532:65532 7472/tcp
image ferrolb/speaker "$VERSION" "$WORK/ferrolb-speaker" /ferrolb-speaker 65532:65532 7473/tcp 7946/udp
image ferrolb-lab/pause 1 "$WORK/pause" /pause 65535:65535

# The web backend: busybox httpd (its log lists each client's address) serving /cgi-bin/index.cgi for "/".
step "web (busybox httpd from Debian's busybox-static)"
web="$WORK/web-root"
mkdir -p "$web/bin" "$web/www/cgi-bin"
# Debian's busybox-static, not whatever busybox comes first on PATH: the image has no libc for a dynamic one.
busybox=/bin/busybox
if ! dpkg -L busybox-static 2>/dev/null | grep -qx "$busybox" && ! dpkg -L busybox-static 2>/dev/null | grep -qx /usr/bin/busybox; then
  echo "images: busybox-static is not installed (make deps installs it)" >&2; exit 1
fi
if readelf -l "$busybox" | grep -q 'program interpreter'; then
  echo "images: $busybox is dynamically linked; the web image needs busybox-static's" >&2; exit 1
fi
cp "$busybox" "$web/bin/busybox"
ln -s busybox "$web/bin/sh"
cat > "$web/www/cgi-bin/index.cgi" <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
# httpd listens on both families and gives IPv4 clients as [::ffff:a.b.c.d]: show the plain address.
client="${REMOTE_ADDR#[}"; client="${client%]}"; client="${client#::ffff:}"
printf 'web pod %s saw client %s\n' "$(/bin/busybox cat /proc/sys/kernel/hostname)" "$client"
CGI
chmod 755 "$web/www/cgi-bin/index.cgi"
layout="$WORK/oci-web"; archive="$OUT/ferrolb-lab-web-1.tar"
umoci init --layout "$layout"
umoci new --image "$layout:1"
umoci insert --image "$layout:1" --history.created_by "images/build.sh: web root" "$web" /
umoci config --image "$layout:1" --os linux --architecture amd64 --config.user 65534:65534 --author ferrolb \
  --config.entrypoint /bin/busybox --config.entrypoint httpd --config.entrypoint -f --config.entrypoint -vv \
  --config.entrypoint -p --config.entrypoint 8000 --config.entrypoint -h --config.entrypoint /www \
  --config.exposedports 8000/tcp --history.created_by "images/build.sh: config"
umoci gc --layout "$layout"
rm -f "$archive"
skopeo copy --quiet "oci:$layout:1" "docker-archive:$archive:ferrolb-lab/web:1"
printf '%-32s %8s  %s\n' "ferrolb-lab/web:1" "$(du -h "$archive" | cut -f1)" "$archive"

# The DNS backend: CoreDNS serving the zone lab.example (web.lab.example is 198.19.0.2), whoami.lab.example
# answered with the client's own address (what the server saw), and CH TXT hostname.bind with the pod's name. It
# binds port 53, so it runs as root inside its pod (a lab image; the kube-dns pods of real clusters do the same
# or add NET_BIND_SERVICE).
step "coredns (images/build-coredns.sh)"
coredns_dir="$(bash images/build-coredns.sh)"
dns="$WORK/dns-root"
mkdir -p "$dns/etc/coredns"
cp "$coredns_dir/coredns" "$dns/coredns"
cat > "$dns/etc/coredns/Corefile" <<'COREFILE'
whoami.lab.example:53 {
    whoami
    log
}
lab.example:53 {
    file /etc/coredns/lab.example.db
    log
}
.:53 {
    chaos ferrolb-lab
    log
}
COREFILE
cat > "$dns/etc/coredns/lab.example.db" <<'ZONE'
$ORIGIN lab.example.
$TTL 60
@    IN SOA ns.lab.example. hostmaster.lab.example. 1 7200 3600 1209600 60
@    IN NS  ns.lab.example.
ns   IN A   198.19.0.53
web  IN A   198.19.0.2
ZONE
layout="$WORK/oci-dns"; archive="$OUT/ferrolb-lab-coredns-1.tar"
umoci init --layout "$layout"
umoci new --image "$layout:1"
umoci insert --image "$layout:1" --history.created_by "images/build.sh: coredns root" "$dns" /
umoci config --image "$layout:1" --os linux --architecture amd64 --config.user 0:0 --author ferrolb \
  --config.entrypoint /coredns --config.entrypoint -conf --config.entrypoint /etc/coredns/Corefile \
  --config.exposedports 53/udp --config.exposedports 53/tcp --history.created_by "images/build.sh: config"
umoci gc --layout "$layout"
rm -f "$archive"
skopeo copy --quiet "oci:$layout:1" "docker-archive:$archive:ferrolb-lab/coredns:1"
printf '%-32s %8s  %s\n' "ferrolb-lab/coredns:1" "$(du -h "$archive" | cut -f1)" "$archive"
