# Weft: `make demo` runs the main job in a local sandbox, `make test` runs every test.
# Both do their own setup on a fresh Debian machine (scripts/install-deps.sh).

SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export RUST_BACKTRACE ?= 1

.PHONY: demo test deps tools build fmt-check clippy crd-check crds unit-test kernel-test bench

demo: deps tools
	scripts/demo.sh

test: deps tools fmt-check clippy crd-check unit-test kernel-test
	@echo "make test: all checks passed"

deps:
	scripts/install-deps.sh

# The Go tools of the control-plane and CNI tests (kube-apiserver, kubectl, etcd 3.6, helm,
# cnitool, the reference CNI plugins), built from the Go module proxy once and cached by version.
tools: deps
	e2e/tools.sh >/dev/null

build: deps
	$(CARGO) build --workspace --locked

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The CRDs in crds/ are generated from crates/api; fail when they drift.
crd-check:
	$(CARGO) run --quiet --locked -p api --bin crdgen -- --check

crds:
	$(CARGO) run --quiet --locked -p api --bin crdgen

# Unit, golden and host integration tests. Tests that need etcd start their own on a free
# loopback port; the operator's control-plane tests start one etcd + kube-apiserver per test
# binary (e2e/controlplane.sh); tests that need the kernel datapath are run by kernel-test
# inside the guest.
unit-test:
	$(CARGO) test --workspace --locked

bench:
	$(CARGO) bench --workspace --locked

include e2e/kernel.mk
