#!/usr/bin/env bash
# `make demo`: builds ferrolb, brings up the lab (a real control plane + a Layer-2 network of namespaces),
# and walks through what works today with the user's own manifests from examples/seed/, explaining each step.
# Leaves the lab running so you can explore; `make lab-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=0
say()  { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$*"; }
run()  { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces)"; exit 1; }
command -v kubectl >/dev/null || { echo "make demo needs kubectl on PATH"; exit 1; }

say "1. Build (one static release build: the images' binaries and the lab's) and the container images, without"
note "Docker or a registry. The Kubernetes binaries are built from the Go module proxy on first use and cached"
note "in /var/cache/ferrolb."
run make -s images
LAB=target/x86_64-unknown-linux-gnu/release/ferrolb-lab
LAB_TMP="$(mktemp -d)"; trap 'rm -rf "$LAB_TMP"' EXIT

say "2. Bring up the lab: etcd + kube-apiserver (RBAC) + kube-controller-manager + kube-scheduler, and 3 nodes"
note "each running containerd, a real kubelet and kube-proxy (nftables mode) in its own network namespace, plus"
note "a host namespace; the images are imported into every node, then 'helm install' of charts/ferrolb."
"$LAB" down >/dev/null 2>&1 || true   # a fresh lab each time, so the story is the same
run "$LAB" up --nodes 3 --kubelets --kube-proxy >/dev/null
export KUBECONFIG="$("$LAB" kubeconfig)"
run "$LAB" status
run kubectl get nodes -o wide
note "ferrolb runs as the chart's pods, started by the kubelets: 2 controller replicas (leader election) and"
note "one hostNetwork speaker per node (NET_RAW only, read-only root filesystem)."
run kubectl get pods -n metallb-system -o wide
SPEAKER_POD=$(kubectl get pods -n metallb-system -l app.kubernetes.io/component=speaker -o jsonpath='{.items[0].metadata.name}')
run kubectl logs -n metallb-system "$SPEAKER_POD" --tail 3

say "3. What Helm installed (CRDs generated from the Rust types; no admission webhook anywhere)."
run kubectl get crds
run kubectl get deploy,ds,sa,role,rolebinding,secret -n metallb-system

say "4. Apply the user's MetalLB manifests, unchanged."
run kubectl apply -f examples/seed/ipaddresspool.yaml -f examples/seed/l2advertisement.yaml
run kubectl apply -f examples/seed/web-svc-lb.yaml
sleep 1
run kubectl apply -f examples/seed/dns-svc-lb.yaml
sleep 1
run kubectl apply -f examples/seed/shared-ip.yaml
sleep 2
run kubectl get svc -A --field-selector spec.type=LoadBalancer
note "web-svc-lb got 172.17.255.1 and dns-svc-lb (TCP+UDP 53 in one Service) 172.17.255.2, as with MetalLB;"
note "dns-svc-tcp and dns-svc-udp share 172.17.255.10 through the legacy allow-shared-ip annotation."
run kubectl get ipaddresspools -n metallb-system
run kubectl describe svc dns-svc-lb -n kube-system

say "5. Why has my Service no IP? A third Service asking for .10 with a clashing port is told exactly why."
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata:
  name: dns-svc-tcp-2
  namespace: kube-system
  annotations: {metallb.universe.tf/allow-shared-ip: "true"}
spec:
  type: LoadBalancer
  loadBalancerIP: 172.17.255.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns-tcp, protocol: TCP, port: 53, targetPort: 53}]
YAML
sleep 2
run kubectl get events -n kube-system --field-selector involvedObject.name=dns-svc-tcp-2

say "6. Bad configuration is refused by the API server itself (schema + CEL), with a message you can act on."
set +e
printf 'apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: typo, namespace: metallb-system}\nspec: {addresses: ["172.17.255.1-172.17.255.x"]}\n' | kubectl apply -f - 2>&1 | sed 's/^/   /'
set -e

say "7. The Layer-2 network: the host namespace reaches each node over a real bridge (TCP and UDP echo)."
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  type: LoadBalancer
  loadBalancerClass: lab.example/none   # ferrolb leaves it alone; the lab sets its address by hand below
  selector: {app: echo}
  ports: [{name: t, port: 7777, protocol: TCP}, {name: u, port: 7777, protocol: UDP}]
YAML
sleep 1
run "$LAB" exec host -- "$LAB" probe tcp 198.18.0.12:7777
run "$LAB" exec host -- "$LAB" probe udp 198.18.0.13:7777
note "Each node's echo server answers with the node's name, so a client can see which node served it."

say "8. kube-proxy IPVS with strictARP: the VIP sits on every node's kube-ipvs0, yet no kernel answers ARP for it."
run kubectl patch svc echo --subresource=status --type=merge -p '{"status":{"loadBalancer":{"ingress":[{"ip":"198.19.0.77"}]}}}'
sleep 1
run ip -n flb-node-1 -4 addr show kube-ipvs0
"$LAB" exec host -- "$LAB" probe udp 198.19.0.77:7777 --timeout-ms 1500 2>&1 | sed 's/^/   /' || true
run ip -n flb-host neigh show 198.19.0.77
note "INCOMPLETE/FAILED: no kernel answered ARP (the Service has a class ferrolb ignores, so no speaker does either)."

say "9. Packets: the lab may only carry 198.18.0.0/15, so swap the pool for one on the lab network, and start the"
note "user's backends: two CoreDNS pods (kube-dns) serving the zone lab.example, and one web pod (busybox httpd)."
note "A pool whose addresses are in use is kept until they are released (its finalizer); to renumber now, as"
note "MetalLB does when a pool is deleted, take the finalizer off: its Services move to the next pool (Event:"
note "'was ...'). The shared-ip pair asks for 172.17.255.10 explicitly, so it stays pending and says why."
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: lab, namespace: metallb-system}
spec: {addresses: [198.19.0.1-198.19.0.254]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-a, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: coredns, image: ferrolb-lab/coredns:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-b, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-3, containers: [{name: coredns, image: ferrolb-lab/coredns:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: node-2, containers: [{name: web, image: ferrolb-lab/web:1, ports: [{containerPort: 8000}]}]}
YAML
run kubectl delete ipaddresspool default -n metallb-system --wait=false
for _ in $(seq 40); do
  kubectl get events -n metallb-system --field-selector reason=PoolInUse -o name 2>/dev/null | grep -q . && break
  sleep 0.5
done
run kubectl get events -n metallb-system --field-selector reason=PoolInUse -o custom-columns=REASON:.reason,MESSAGE:.message
run kubectl patch ipaddresspool default -n metallb-system --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]'
run kubectl wait --for=condition=Ready pod/coredns-a pod/coredns-b -n kube-system --timeout=90s
run kubectl wait --for=condition=Ready pod/web -n default --timeout=90s
sleep 2
run kubectl get svc -A --field-selector spec.type=LoadBalancer
VIP=$(kubectl get svc dns-svc-lb -n kube-system -o jsonpath='{.status.loadBalancer.ingress[0].ip}')

WEB=$(kubectl get svc web-svc-lb -n default -o jsonpath='{.status.loadBalancer.ingress[0].ip}')

say "10. The user's check, literally: dig and curl from the host through the static route (198.19.0.0/24 dev eth0),"
note "answered by the CoreDNS and web pods through each node's kube-proxy."
run "$LAB" exec host -- ip route
run "$LAB" exec host -- "$LAB" arping "$VIP"
note "exactly one MAC answers ARP for $VIP: the elected node's (node MACs below)"
for n in 1 2 3; do printf '   node-%s %s\n' "$n" "$(ip -n flb-node-$n link show eth0 | grep -o 'link/ether [^ ]*')"; done
run "$LAB" exec host -- dig "@$VIP" +short web.lab.example
run "$LAB" exec host -- dig "@$VIP" +tcp +short web.lab.example
run "$LAB" exec host -- dig "@$VIP" +short CH TXT hostname.bind
run "$LAB" exec host -- curl -sS "http://$WEB/"
note "externalTrafficPolicy: Local keeps the client's address: the address moves to node-2 (the web pod's node)."
run kubectl patch svc web-svc-lb -n default --type=merge -p '{"spec":{"externalTrafficPolicy":"Local"}}'
for _ in $(seq 40); do
  [ "$(kubectl get servicel2status -n metallb-system -l metallb.io/service-name=web-svc-lb -o jsonpath='{.items[*].status.node}')" = node-2 ] && break
  sleep 0.5
done
run kubectl get servicel2status -n metallb-system -l metallb.io/service-name=web-svc-lb
run "$LAB" exec host -- curl -sS "http://$WEB/"
run kubectl logs -n default web --tail 2
OWNER=$(kubectl get servicel2status -n metallb-system -l metallb.io/service-name=dns-svc-lb -o jsonpath='{.items[0].status.node}')

say "11. Hard failure of $OWNER: SIGKILL its kubelet, containerd and pods (the speaker pod too), pull its cable."
note "Each speaker heartbeats its three watchers every 50 ms (HMAC-signed); when two of them have not heard it for 200 ms"
note "and it does not answer them, every speaker counts it dead; the new owner probes its addresses with ARP for"
note "100 ms, takes them all if nobody answers, and sends gratuitous ARP."
note "A DNS client on the host asks every 10 ms (a new source port each time, as a resolver does) and reports"
note "the longest time without an answer."
"$LAB" exec host -- "$LAB" prober dns "$VIP:53" --duration-ms 5000 > "$LAB_TMP/dns-prober.json" &
prober=$!
sleep 1
run "$LAB" kill "$OWNER"
wait "$prober"
printf '   %s\n' "$(cat "$LAB_TMP/dns-prober.json")"
note "max_gap_ms: the outage real DNS clients saw (queries hashed to a CoreDNS pod on the dead node are lost"
note "too, until its endpoint is removed; the longest gap is the address's move)."
run "$LAB" exec host -- "$LAB" arping "$VIP"
run "$LAB" exec host -- dig "@$VIP" +short web.lab.example || true   # one query: it may hash to the dead pod
run "$LAB" revive "$OWNER"
note "its kubelet starts again and restarts the speaker pod"
for _ in $(seq 120); do
  [ "$(kubectl get servicel2status -n metallb-system -l metallb.io/service-name=dns-svc-lb -o jsonpath='{.items[*].status.node}')" = "$OWNER" ] && break
  sleep 0.5
done
run kubectl get pods -n metallb-system -o wide
run kubectl get servicel2status -n metallb-system -l metallb.io/service-name=dns-svc-lb
note "revived: ownership returns to $OWNER (rendezvous hashing moves only that node's addresses)"

say "12. IPv6: the lab is dual-stack (2001:db8::/32). A dual-stack Service gets one address per family; one node answers both."
run kubectl patch ipaddresspool lab -n metallb-system --type=merge -p '{"spec":{"addresses":["198.19.0.1-198.19.0.254","2001:db8:19::1-2001:db8:19::ff"]}}'
kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: dns-dual, namespace: kube-system}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {k8s-app: kube-dns}
  ports: [{name: dns-udp, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
YAML
for _ in $(seq 60); do
  [ -n "$(kubectl get svc dns-dual -n kube-system -o jsonpath='{.status.loadBalancer.ingress[1].ip}')" ] && break
  sleep 0.5
done
run kubectl get svc dns-dual -n kube-system -o jsonpath='{.status.loadBalancer.ingress}{"\n"}'
V4=$(kubectl get svc dns-dual -n kube-system -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
V6=$(kubectl get svc dns-dual -n kube-system -o jsonpath='{.status.loadBalancer.ingress[1].ip}')
sleep 2
run "$LAB" exec host -- ip -6 route show 2001:db8:19::/64
run "$LAB" exec host -- "$LAB" arping "$V4"
run "$LAB" exec host -- "$LAB" arping "$V6"
note "the same MAC answers ARP for $V4 and neighbour solicitations for $V6"
run "$LAB" exec host -- dig "@$V6" +short web.lab.example
run "$LAB" exec host -- dig "@$V6" +tcp +short web.lab.example
note "answered by the dual-stack CoreDNS pods over IPv6"

say "Done. The lab keeps running:"
note "export KUBECONFIG=$KUBECONFIG"
note "$LAB exec host -- ip neigh      # run anything as the user's workstation"
note "make lab-down                   # remove every namespace, process and file"
