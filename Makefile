# Ferry's developer entry points. `make test` is the one command that runs every test; it installs
# what the tests need (a Python venv with the real OIP client, cargo-fuzz) on first use.
SHELL := /bin/bash
VENV ?= $(HOME)/.cache/ferry-venv
PY := $(VENV)/bin/python
FUZZ_SECONDS ?= 20

.PHONY: test deps tools storage-tools trace-tools browser-deps lint rust-test interop fuzz-smoke serve minilm many bench testbed-up testbed-down

test: deps lint rust-test fuzz-smoke

deps: $(VENV)/.ferry-deps tools storage-tools trace-tools browser-deps

# Command-line tools the tests and the test bed call (curl: the quick start's printed command and
# the S3 uploads; openssl: the test bed's PKI; skopeo and umoci: the OCI image tests;
# docker-registry: a real OCI registry for oci:// models; lua5.1: Argo CD's health checks run
# as Argo CD runs them, Lua 5.1; chromium: the console's browser test). Installed from Debian
# when missing.
tools:
	@missing=""; for t in curl openssl unshare skopeo umoci docker-registry lua5.1 chromium; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  pkgs=$$(echo "$$missing" | sed 's/unshare/util-linux/'); \
	  apt-get update -qq && apt-get install -y -qq $$pkgs; fi

# The console's browser test drives Debian's Chromium with playwright-core (npm, pinned by
# tests/browser/package-lock.json; no browser download: it uses /usr/bin/chromium).
browser-deps: tests/browser/node_modules/.ferry-deps
tests/browser/node_modules/.ferry-deps: tests/browser/package.json tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund
	touch $@

# Real stores for s3:// and gs:// models, built from the Go module proxy once (~5 min), cached
# beside the test bed: MinIO (AGPL-3.0) and fake-gcs-server (BSD-2), test-only servers, never
# dependencies of Ferry.
STORAGE_BIN = $(HOME)/.cache/ferry-storage-test/bin
MINIO_VERSION = v0.0.0-20260212201848-7aac2a2c5b7c
FAKE_GCS_VERSION = v1.56.1
storage-tools: $(STORAGE_BIN)/minio-$(MINIO_VERSION) $(STORAGE_BIN)/fake-gcs-server-$(FAKE_GCS_VERSION)
$(STORAGE_BIN)/minio-$(MINIO_VERSION):
	mkdir -p $(STORAGE_BIN)
	GOBIN=$(STORAGE_BIN) GOFLAGS=-mod=mod go install github.com/minio/minio@$(MINIO_VERSION)
	touch $@
$(STORAGE_BIN)/fake-gcs-server-$(FAKE_GCS_VERSION):
	mkdir -p $(STORAGE_BIN)
	GOBIN=$(STORAGE_BIN) GOFLAGS=-mod=mod go install github.com/fsouza/fake-gcs-server@$(FAKE_GCS_VERSION)
	touch $@

# A real OTLP receiver for the trace test: Jaeger v2 (an OpenTelemetry Collector distribution,
# Apache-2.0, test-only), built from the Go module proxy once (~5 min) as a tool of a throwaway
# module (its own go.mod has replace directives, so `go install pkg@version` refuses it).
TRACE_BIN = $(HOME)/.cache/ferry-trace-test/bin
JAEGER_VERSION = v1.75.0
JAEGER = $(TRACE_BIN)/jaeger-$(JAEGER_VERSION)
trace-tools: $(JAEGER)
$(JAEGER):
	mkdir -p $(TRACE_BIN)
	tmp=$$(mktemp -d) && cd $$tmp && go mod init ferry-trace-tools >/dev/null 2>&1 \
	  && GOFLAGS=-mod=mod go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@$(JAEGER_VERSION) \
	  && go build -trimpath -ldflags "-s -w" -o $@.part github.com/jaegertracing/jaeger/cmd/jaeger \
	  && mv $@.part $@; rc=$$?; rm -rf $$tmp; exit $$rc

$(VENV)/.ferry-deps: models/requirements.txt tests/interop/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r models/requirements.txt -r tests/interop/requirements.txt
	touch $@

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --all-targets --features ferry-server/onnxruntime -- -D warnings

ORT_LIB = $(shell $(PY) -c "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so*')))[0])" 2>/dev/null)

# One build for every Rust test, the optional ONNX Runtime backend included; the tritonclient
# suite (tests/interop) runs from crates/cli/tests/cli/interop.rs against this very `ferry` binary.
TEST_ENV = FERRY_REQUIRE_JAEGER=1 FERRY_JAEGER=$(JAEGER) FERRY_REQUIRE_OCI=1 FERRY_REQUIRE_LUA=1 FERRY_REQUIRE_BROWSER=1 FERRY_REQUIRE_STORAGE=1 FERRY_REQUIRE_MINILM=1 FERRY_REQUIRE_INTEROP=1 FERRY_INTEROP_PYTHON=$(PY) ORT_DYLIB_PATH=$(ORT_LIB)

# The cluster tests (testbed/e2e) need the test bed: it is built or reused, brought up before
# the one test run and taken down after it, also when a test fails.
TESTBED_ENV = FERRY_REQUIRE_TESTBED=1 FERRY_TESTBED_KUBECONFIG=$(CURDIR)/testbed/run/admin.kubeconfig
CARGO_TEST_FLAGS = --workspace --features ferry-server/onnxruntime

rust-test: minilm many
	FERRY_TESTBED_CARGO_FLAGS="$(CARGO_TEST_FLAGS) --bins" testbed/up.sh || { testbed/down.sh; exit 1; }
	$(TEST_ENV) $(TESTBED_ENV) cargo test $(CARGO_TEST_FLAGS) --no-fail-fast; rc=$$?; testbed/down.sh || rc=1; exit $$rc

testbed-up:
	testbed/up.sh

testbed-down:
	testbed/down.sh

interop: deps
	$(TEST_ENV) cargo test -p ferry --features ferry-server/onnxruntime --test cli interop::

fuzz-smoke:
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
	cd fuzz && for t in rest_decode grpc_decode router_classify; do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 || exit 1; done

serve:
	cargo run --release -p ferry -- up -f examples/

minilm: deps
	$(MAKE) -C models minilm PY=$(PY)

many: deps
	$(MAKE) -C models many PY=$(PY)

bench:
	bench/run.sh
