# meshgate: `make run` starts a demo (real Triton + gateway), `make test` installs and tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROTO_DIR := protos
PROTO_FILES := $(shell find $(PROTO_DIR) -name '*.proto' | sort)
CONFIG ?=
# Optional dependency groups installed by `make venv` (the image builds with EXTRAS= : none).
EXTRAS ?= dev
# APIs vendored unchanged (TorchServe's, KEDA's external scaler), compiled where they are used.
VENDORED_PROTOS := $(shell find adapters gateway -name '*.proto' | sort)
# google/rpc/status.proto, imported by TorchServe's protos: shipped by googleapis-common-protos.
GOOGLE_PROTOS = $(shell $(BIN)/python -c 'import google.rpc, pathlib; print(pathlib.Path(google.rpc.__path__[0]).parents[1])')

.PHONY: help venv proto proto-check lint ruff mypy test run bench-overhead bench-auth bench-discovery bench-stream bench-balance bench-fairness bench-ledger bench-peers bench-des bench-dashboard bench-probe servers system-deps test-deps buf-lint clean

help:
	@echo "make run            start a local Triton with demo models and the gateway in front of it"
	@echo "make test           install everything and run lint + the whole test suite"
	@echo "make lint           ruff + mypy --strict"
	@echo "make proto          regenerate Python code from protos/"
	@echo "make bench-overhead gateway overhead vs a bare grpc.aio proxy and nginx"
	@echo "make bench-auth     TLS, mTLS, API key and JWT against the plain path, one client for all"
	@echo "make bench-discovery Consul change -> routing latency, cost of 1,000 endpoints"
	@echo "make bench-stream   LLM token streaming through meshgate vs direct"
	@echo "make bench-balance  routing policies compared on simulated GPU backends"
	@echo "make bench-fairness one pool at 2x overload, 4 tenants: fair admission vs backend FIFO"
	@echo "make bench-ledger   usage records/s into SQLite and PostgreSQL, and what append() costs the request path"
	@echo "make bench-peers    the LLM path against LiteLLM and Portkey, one fake OpenAI backend, one run"
	@echo "make bench-des      the policies at 1,000 backends x 3 replicas, then across time scales (simulation)"
	@echo "make bench-http2    HTTP/2 (httpx + h2) against aiohttp's HTTP/1.1 to a TLS API: CPU per call, bursts"
	@echo "make bench-probe    the load probe's cost at 200 and 1,000 endpoints"
	@echo "make bench-dashboard the Grafana dashboard's main panels from a real Prometheus run, as a PNG"

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.$(if $(EXTRAS),[$(EXTRAS)],)'
	@touch $@

venv: $(BIN)/.installed

# Generated code: never edited by hand; tests/test_codegen.py fails when it drifts.
proto: venv
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I $(PROTO_DIR) \
	  --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) --grpc_python_out=$(PROTO_DIR) \
	  --mypy_grpc_out=$(PROTO_DIR) $(PROTO_FILES)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -I . -I $(GOOGLE_PROTOS) \
	  --python_out=. --pyi_out=. --grpc_python_out=. --mypy_grpc_out=. $(VENDORED_PROTOS)

# Model servers run in their own virtualenvs (they pin other grpcio/numpy versions).
servers: venv
	$(BIN)/python deploy/demo/server_envs.py ensure triton mlserver torchserve

system-deps:
	@bash deploy/demo/system-deps.sh bench

test-deps:
	@bash deploy/demo/system-deps.sh test

ruff: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

mypy: venv
	$(BIN)/mypy gateway adapters discovery

lint: ruff mypy

# buf from npm: the same lint that Go/Java/TypeScript consumers of protos/ would run.
buf-lint:
	cd $(PROTO_DIR) && npx --yes @bufbuild/buf@1.75.0 lint

test: venv test-deps servers lint buf-lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

run: venv proto
	$(BIN)/python deploy/demo/server_envs.py ensure triton >/dev/null
	$(BIN)/python deploy/demo/run_demo.py $(if $(CONFIG),--config $(CONFIG),)

bench-overhead: venv system-deps
	$(BIN)/python -m bench.overhead $(BENCH_ARGS)

bench-auth: venv system-deps
	$(BIN)/python -m bench.auth $(BENCH_ARGS)

bench-peers: venv system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

bench-http2: venv system-deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.http2 $(BENCH_ARGS)

bench-ledger: venv test-deps
	$(BIN)/python -m bench.ledger $(BENCH_ARGS)

bench-fairness: venv
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.fairness $(BENCH_ARGS)

bench-discovery: venv system-deps
	$(BIN)/python -m bench.discovery $(BENCH_ARGS)

bench-stream: venv
	$(BIN)/python -m bench.stream $(BENCH_ARGS)

# matplotlib draws the latency CDFs (bench/out/balance.png); about 10 minutes.
bench-balance: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.balance $(BENCH_ARGS)

# The load probe's cost per endpoint and per round, before/after, with nginx serving the pages.
bench-probe: venv system-deps
	$(BIN)/python -m bench.probe $(BENCH_ARGS)

# The same policies at 1,000 backends x 3 gateway replicas, simulated (meshgate's scheduler code
# on a simulated clock): herding on a stale shared snapshot, and decision cost at that size.
# A real Prometheus scrapes a real gateway for 90 s; the dashboard's main panels -> PNG.
bench-dashboard: venv test-deps servers
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.dashboard $(BENCH_ARGS)

bench-des: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench.des $(BENCH_ARGS)
	$(BIN)/python -m bench.des --replicas 1,10 --policies weighted_least_request,predicted_best_of_k $(BENCH_ARGS)
	$(BIN)/python -m bench.des_sweep $(SWEEP_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
