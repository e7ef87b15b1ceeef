# ferrolb: `make test` runs everything CI runs; `make demo` shows the user's scenario in the lab (root).
CARGO ?= cargo

.PHONY: test fmt-check clippy unit crds bench-alloc demo lab-up lab-down

test: fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

# Regenerates charts/ferrolb/crds from the types (a test fails when they are stale).
crds:
	$(CARGO) run -q -p ferrolb-crds --bin crdgen

# Allocator cost: 50,000 Services into one /16, beside a naive first-free scan.
bench-alloc:
	$(CARGO) bench -p ferrolb-controller --bench fill_pool

# Builds, brings up the lab and walks through the user's scenario; leaves the lab running.
demo:
	bash scripts/demo.sh

lab-up:
	$(CARGO) run -q --release -p ferrolb-tests --bin ferrolb-lab -- up

lab-down:
	$(CARGO) run -q --release -p ferrolb-tests --bin ferrolb-lab -- down
