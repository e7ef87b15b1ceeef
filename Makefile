# ferrolb: `make check` is the quick tier (no root, no images, no control plane); `make test` runs everything CI
# runs; `make demo` shows the user's scenario in the lab (root).
CARGO ?= cargo

HELM_KUBE_VERSION := 1.35.4

.PHONY: check test fmt-check clippy pure e2e chart crds bench-alloc soak upgrade-test demo lab-up lab-down fuzz images deps

# Test binaries of ferrolb-tests (tests/tests/*.rs) in three tiers; tests/tests/layout.rs fails when a file is in
# none of the lists or in several. PURE_SUITES read sources and render values (no root, no helm, no network);
# LAB_SUITES need root: they bring up the lab (network namespaces, the cached control plane; real_nodes also the
# images), or, for solicited_node_groups, a network namespace of their own.
# chart.rs is in both: its `helm::` tests run `helm template` from the control-plane cache, so only the rest is pure.
# UPGRADE_SUITES need root and an old speaker's binary too: only `make upgrade-test` runs them.
PURE_SUITES := layout chart
# Longest first (about 240, 210, 210, 60, 60 s ... here): tests/lab/run-suites.sh runs them two at a time.
LAB_SUITES := speaker real_nodes faults migration selectors controller preferred_nodes interfaces ipv6 lab crds plugin solicited_node_groups
UPGRADE_SUITES := rolling_upgrade

# The quick tier: formatting, clippy, every unit, property and pure test. Needs no root, no images, no control
# plane and no helm.
check: fmt-check clippy pure

# Everything: the quick tier, then the root tier (images, chart lint, the lab's end-to-end suites).
# One failing suite does not hide the others: every suite runs to its end.
test: check deps chart e2e

# What the lab's real nodes and `make images` need from Debian (installed once; a no-op when present).
DEB_PACKAGES := containerd runc containernetworking-plugins umoci skopeo nftables gcc libc6-dev libfaketime libcap2-bin busybox-static bind9-dnsutils
deps:
	@bash tests/lab/install-deps.sh $(DEB_PACKAGES)

# Container images without Docker or a registry: target/images/*.tar (controller, speaker, the lab's pause).
images: deps
	bash images/build.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

pure:
	$(CARGO) test --workspace --exclude ferrolb-tests
	$(CARGO) test -p ferrolb-tests --lib --bins $(PURE_SUITES:%=--test %) -- --skip helm::

# The lab's end-to-end tests start the binaries and (real nodes) import the images, so build them all first.
# chart.rs's helm tests (seconds) go first, so a failing lab suite cannot keep them from running. The lab suites
# run two at a time (E2E_JOBS=1: one at a time), each to its end even when another fails.
e2e: images
	$(CARGO) build --workspace --bins
	$(CARGO) test -p ferrolb-tests --test chart -- helm::
	CARGO="$(CARGO)" bash tests/lab/run-suites.sh $(LAB_SUITES)

# helm lint + render (also with the ServiceMonitor and PrometheusRule on; tests/tests/chart.rs parses the rules);
# helm comes from the same cached build as the lab's control plane.
chart:
	@helm="$$(bash tests/lab/build-control-plane.sh)/helm" && \
	  $$helm lint charts/ferrolb && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) >/dev/null && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) --set speaker.enabled=true --set loadBalancerClass=example.com/l2 >/dev/null && \
	  $$helm template ferrolb charts/ferrolb -n metallb-system --kube-version $(HELM_KUBE_VERSION) --set metrics.serviceMonitor.enabled=true --set metrics.prometheusRule.enabled=true >/dev/null && \
	  echo "chart: lint and template ok"

# Regenerates charts/ferrolb/templates/crds from the types (a test fails when they are stale).
crds:
	$(CARGO) run -q -p ferrolb-crds --bin crdgen

# Allocator cost: 50,000 Services into one /16, beside a naive first-free scan.
bench-alloc:
	$(CARGO) bench -p ferrolb-controller --bench fill_pool

# The long statistical runs (root, ~25 min): 300 s of 15 % and 30 % loss on the liveness port, ferrolb beside
# MetalLB in the same run (tests/benches/faults.rs; tests/tests/faults.rs keeps a short version of each fault).
SOAK_LOSS_SECS ?= 300
soak:
	$(CARGO) build --release --workspace --bins
	FERROLB_LOSS_SECS=$(SOAK_LOSS_SECS) $(CARGO) bench -p ferrolb-tests --bench faults

# A rolling upgrade in the lab (root, a few minutes): speakers of OLD_SPEAKER_COMMIT (the last with liveness format
# FLB2) replaced node by node with this build, ARP asked throughout (tests/tests/rolling_upgrade.rs). The old
# speaker is built once from this repository's history into a cache outside it (tests/lab/build-old-speaker.sh).
OLD_SPEAKER_COMMIT ?= 7c38fcf
upgrade-test:
	@old="$$(FERROLB_OLD_COMMIT=$(OLD_SPEAKER_COMMIT) bash tests/lab/build-old-speaker.sh)" && \
	  $(CARGO) build --workspace --bins && \
	  FERROLB_OLD_SPEAKER="$$old" $(CARGO) test -p ferrolb-tests $(UPGRADE_SUITES:%=--test %) -- --nocapture

# Builds, brings up the lab and walks through the user's scenario; leaves the lab running.
demo:
	bash scripts/demo.sh

# The lab CLI from `make images`' static release build (the same binaries the demo runs).
LAB := target/x86_64-unknown-linux-gnu/release/ferrolb-lab
lab-up: images
	$(LAB) up --kubelets --kube-proxy

lab-down:
	@[ -x $(LAB) ] || $(MAKE) -s images
	$(LAB) down

# Coverage-guided fuzzing of the speaker's parsers (needs `cargo install cargo-fuzz`; runs on stable through
# RUSTC_BOOTSTRAP with --sanitizer none, as the machine cannot fetch a nightly toolchain).
FUZZ_RUNS ?= 20000000
fuzz:
	cd speaker/fuzz && mkdir -p corpus/arp_frame corpus/ndp_frame corpus/liveness_datagram && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O arp_frame corpus/arp_frame seeds/arp_frame -- -runs=$(FUZZ_RUNS) && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O ndp_frame corpus/ndp_frame seeds/ndp_frame -- -runs=$(FUZZ_RUNS) && \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none -O liveness_datagram corpus/liveness_datagram seeds/liveness_datagram -- -runs=$(FUZZ_RUNS)
