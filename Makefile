# The two commands of the README: `make demo` (the main job) and `make test`.
# Both set up a fresh machine: .venv with the pins of requirements.lock, and the Debian data package.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
export TVM_NUM_THREADS ?= 2

.PHONY: demo test test-all data setup bench lint
setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

data: $(FMNIST)
$(FMNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: $(STAMP) $(FMNIST)
	$(PY) -m lightning_gbd.app.demo --out runs/demo

test: $(STAMP) $(FMNIST)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP) $(FMNIST)
	$(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

bench: $(STAMP)
	$(PY) -m benchmarks.gather_gemm_speed

# ruff (lint + format check) and the import contracts of pyproject.toml (docs/architecture.md)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Peer runtimes (ONNX Runtime, OpenVINO, DeepSparse) in their own venv, and the side-by-side
# whole-model benchmark against them (benchmarks/README.md, "Against other CPU runtimes").
# $(PEERS_VENV)/quant: ONNX Runtime's quantization tool for bench-peers-int8 (it needs onnx >= 1.16,
# deepsparse pins onnx < 1.15; benchmarks/requirements-peers-quant.txt).
PEERS_VENV ?= .venv-peers
PEERS_REQS := benchmarks/requirements-peers.txt benchmarks/requirements-peers-quant.txt
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell cat $(PEERS_REQS) | cksum | cut -d' ' -f1)
.PHONY: peers-venv bench-peers bench-peers-int8
peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): $(PEERS_REQS)
	@test -x $(PEERS_VENV)/bin/python || python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -q -r benchmarks/requirements-peers.txt
	@test -x $(PEERS_VENV)/quant/bin/python || python3 -m venv $(PEERS_VENV)/quant
	$(PEERS_VENV)/quant/bin/python -m pip install -q --upgrade pip
	$(PEERS_VENV)/quant/bin/python -m pip install -q -r benchmarks/requirements-peers-quant.txt
	@rm -f $(PEERS_VENV)/.installed-* && touch $@

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(PY) -m benchmarks.peers

bench-peers-int8: $(STAMP) $(PEERS_STAMP)
	$(PY) -m benchmarks.peers_int8
