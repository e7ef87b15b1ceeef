# ferrolb: `make test` runs everything CI runs; `make demo` shows the user's scenario in the lab (root).
CARGO ?= cargo

HELM_KUBE_VERSION := 1.35.4

.PHONY: test fmt-check clippy unit chart crds bench-alloc demo lab-up lab-down fuzz images deps

test: deps fmt-check clippy chart unit

# What the lab's real nodes and `make images` need from Debian (installed once; a no-op when present).
DEB_PACKAGES := containerd runc containernetworking-plugins umoci skopeo nftables gcc libc6-dev libfaketime
deps:
	@bash tests/lab/install-deps.sh $(DEB_PACKAGES)

# Container images without Docker or a registry: target/images/*.tar (controller, speaker, the lab's pause).
images: deps
	bash images/build.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The lab's end-to-end tests start the binaries and (real nodes) import the images, so build them all first.
unit: images
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# helm lint + render (also with the ServiceMonitor and PrometheusRule on; tests/tests/chart.rs parses the rules);
# helm comes from the same cached build as the lab's control plane.
chart:
	@helm="$$(bash tests/lab/build-control-plane.sh)/helm" && \
	  $$helm lint charts/ferrolb && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) >/dev/null && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) --set speaker.enabled=true --set loadBalancerClass=example.com/l2 >/dev/null && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true >/dev/null && \
	  echo "chart: lint and template ok"

# Regenerates charts/ferrolb/crds from the types (a test fails when they are stale).
crds:
	$(CARGO) run -q -p ferrolb-crds --bin crdgen

# Allocator cost: 50,000 Services into one /16, beside a naive first-free scan.
bench-alloc:
	$(CARGO) bench -p ferrolb-controller --bench fill_pool

# Builds, brings up the lab and walks through the user's scenario; leaves the lab running.
demo:
	bash scripts/demo.sh

lab-up: images
	$(CARGO) run -q --release -p ferrolb-tests --bin ferrolb-lab -- up --kubelets

lab-down:
	$(CARGO) run -q --release -p ferrolb-tests --bin ferrolb-lab -- down

# Coverage-guided fuzzing of the speaker's parsers (needs `cargo install cargo-fuzz`; runs on stable through
# RUSTC_BOOTSTRAP with --sanitizer none, as the machine cannot fetch a nightly toolchain).
FUZZ_RUNS ?= 20000000
fuzz:
	cd speaker/fuzz && mkdir -p corpus/arp_frame corpus/ndp_frame corpus/liveness_datagram && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O arp_frame corpus/arp_frame seeds/arp_frame -- -runs=$(FUZZ_RUNS) && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O ndp_frame corpus/ndp_frame seeds/ndp_frame -- -runs=$(FUZZ_RUNS) && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O liveness_datagram corpus/liveness_datagram seeds/liveness_datagram -- -runs=$(FUZZ_RUNS)
