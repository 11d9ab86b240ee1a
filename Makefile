# Tator operator: build, test and run it on a local control plane.
#
#   make demo          build, start a local cluster, run the operator, apply a sample Tator
#   make test          build everything missing and run every test on real control planes
#   make cluster-up    start (or reuse) the local cluster; prints export lines to eval
#   make cluster-down  stop the demo operator and the local cluster
#   make crds          regenerate crds/ from the Rust types
#   make lint          rustfmt check and clippy -D warnings
#   make audit         cargo audit of Cargo.lock against the advisories in tests/tools/advisory-db
#   make test-e2e      end-to-end journeys with Tator's real processes (also part of make test)
#   make test-faults   fault injection only (also part of make test)
#   make test-compat   the suite on the oldest supported Kubernetes, then on the newest
#   make bench         benchmarks (not part of make test); writes docs/benchmarks.md

SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE_DIR ?= $(HOME)/.cache/tator-operator
export CARGO_TARGET_DIR ?= $(CACHE_DIR)/cargo-target
export TATOR_TOOLS_BIN := $(shell tests/tools/build.sh --print-bin)
export TATOR_TESTBED_BIN := $(CARGO_TARGET_DIR)/debug/testbed
OPERATOR_BIN := $(CARGO_TARGET_DIR)/debug/tator-operator
CLUSTER_DIR ?= $(CURDIR)/.testbed/cluster
DEMO_DIR := $(CURDIR)/.testbed/demo

.PHONY: help tools build crds crds-check lint audit test test-unit test-faults test-e2e e2e-images test-compat cluster-up cluster-down demo bench \
  image chart-lint deploy deploy-check

help:
	@sed -n '2,13p' Makefile | sed 's/^# \{0,1\}//'

## Control-plane binaries from pinned Go modules (cached in $(CACHE_DIR); a second run is a no-op).
tools:
	@tests/tools/build.sh >/dev/null

build:
	cargo build --workspace --bins

## CRD YAML is generated from the Rust types; never edit crds/ by hand.
crds: build
	$(OPERATOR_BIN) crd > crds/tator.io_tatordeployments.yaml

crds-check: build
	@$(OPERATOR_BIN) crd | diff -u crds/tator.io_tatordeployments.yaml - \
	  || { echo "crds/ is out of date: run 'make crds' and commit the result" >&2; exit 1; }

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## RustSec advisories (unmaintained, unsound and yanked crates too) from the snapshot kept in
## tests/tools/advisory-db: these machines cannot fetch the database from GitHub.
audit:
	@tests/tools/audit.sh

## Tator's images as host folders for the end-to-end bed (cached in $(CACHE_DIR)/e2e-<key>; a
## second run is a no-op). The shared inputs are checked against their pins first.
e2e-images:
	@tests/tools/shared-inputs.sh --check
	@tests/tools/e2e-images.sh

test: tools build crds-check e2e-images
	@set -o pipefail; status=0; log=$$(mktemp); \
	cargo test --workspace --no-fail-fast 2>&1 | tee $$log || status=$$?; \
	tests/tools/wait-testbeds.sh || status=1; \
	tests/tools/test-summary.sh $$log || status=1; rm -f $$log; \
	exit $$status

test-unit:
	cargo test --workspace --lib --bins

## The whole suite against the oldest supported Kubernetes release (tests/tools/kubernetes-oldest,
## built from the k8s.io/kubernetes module like the pinned newest), then against the newest.
test-compat: tools build
	tests/tools/build.sh --oldest >/dev/null
	$(MAKE) test TATOR_TOOLS_BIN=$$(tests/tools/build.sh --oldest --print-bin)
	$(MAKE) test

## End-to-end journeys only: Tator's own processes from the operator's pod specs (also part of `make test`).
test-e2e: tools build e2e-images
	@set -o pipefail; status=0; log=$$(mktemp); \
	cargo test -p tator-operator --test e2e 2>&1 | tee $$log || status=$$?; \
	tests/tools/wait-testbeds.sh || status=1; \
	tests/tools/test-summary.sh $$log || status=1; rm -f $$log; \
	exit $$status

## Fault injection only (kill -9, control-plane restarts, invalid input); also part of `make test`.
test-faults: tools build
	@set -o pipefail; status=0; log=$$(mktemp); \
	cargo test -p tator-operator --test faults 2>&1 | tee $$log || status=$$?; \
	tests/tools/wait-testbeds.sh || status=1; \
	tests/tools/test-summary.sh $$log || status=1; rm -f $$log; \
	exit $$status

cluster-up: tools build e2e-images
	@$(TATOR_TESTBED_BIN) up --process-node --dir $(CLUSTER_DIR)

cluster-down:
	@if [ -f $(DEMO_DIR)/operator.pid ] && kill -0 $$(cat $(DEMO_DIR)/operator.pid) 2>/dev/null; then \
	  kill $$(cat $(DEMO_DIR)/operator.pid); \
	  while kill -0 $$(cat $(DEMO_DIR)/operator.pid) 2>/dev/null; do sleep 0.2; done; \
	  echo "operator stopped"; fi; rm -f $(DEMO_DIR)/operator.pid
	@if [ -x $(TATOR_TESTBED_BIN) ]; then $(TATOR_TESTBED_BIN) down --dir $(CLUSTER_DIR); fi

## The end-to-end images (downloads, mostly) are built while cargo and Go compile.
demo:
	@tests/tools/shared-inputs.sh --check
	@log=$$(mktemp); tests/tools/e2e-images.sh >$$log 2>&1 & images=$$!; status=0; \
	cargo build --workspace --bins && tests/tools/build.sh --demo >/dev/null || status=$$?; \
	wait $$images || { echo "tests/tools/e2e-images.sh failed:"; cat $$log; status=1; }; \
	rm -f $$log; exit $$status
	@tests/tools/demo.sh

## Benchmarks on a fresh local control plane with the release build; writes docs/benchmarks.md.
## BENCH_ARGS="--sizes 1,10" for a shorter run.
bench: tools build
	cargo build --release -p tator-operator -p tator-bench
	$(CARGO_TARGET_DIR)/release/tator-bench --operator $(CARGO_TARGET_DIR)/release/tator-operator $(BENCH_ARGS)

## Packaging: the operator image, the Helm chart and the plain-YAML installs rendered from it.
IMAGE ?= cvisionai/tator-operator:$(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' charts/tator-operator/Chart.yaml)
HELM := $(TATOR_TOOLS_BIN)/helm

image:
	@engine=$$(command -v docker || command -v podman || true); \
	if [ -z "$$engine" ] || ! $$engine info >/dev/null 2>&1; then \
	  echo "no running container engine (docker or podman) here; would run:"; \
	  echo "  docker build -t $(IMAGE) ."; \
	else \
	  set -x; $$engine build -t $(IMAGE) .; \
	fi

chart-lint: tools
	$(HELM) lint --strict charts/tator-operator
	$(HELM) lint --strict charts/tator-operator --set watchAllNamespaces=true

deploy: tools
	HELM=$(HELM) deploy/render.sh

deploy-check: tools
	@tmp=$$(mktemp -d); HELM=$(HELM) deploy/render.sh $$tmp; status=0; \
	for f in install.yaml install-cluster-wide.yaml; do \
	  diff -u deploy/$$f $$tmp/$$f || status=1; done; rm -rf $$tmp; \
	[ $$status = 0 ] || { echo "deploy/ is out of date: run 'make deploy' and commit the result" >&2; exit 1; }
