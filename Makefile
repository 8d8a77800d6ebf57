# Two commands set everything up on a fresh machine (see README.md):
#   make demo   creates .venv, installs CarbonCP with every extra, runs the one-machine demo
#   make test   the same set-up, then lint + the whole test suite (what CI runs)
#   make bench  speed and memory benchmarks (ratios against a baseline in the same run)
#   make mutation  mutation testing of the decision code (docs/MUTATION.md; ~30-40 min)
PY ?= python3
VENV ?= .venv
TFLITE_VENV ?= .venv-tflite
TRITON_VENV ?= .venv-triton
BIN := $(VENV)/bin
# torch==2.13.0 sits on the same pip line as everything that needs torch, or pip may reach
# for a multi-GB CUDA build (docs/METHOD.md Appendix A).
PIP_ALL := torch==2.13.0 -e .[all]

.PHONY: demo test system-tools lint test-py test-tflite-runtime test-arm64 test-triton bench mutation clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(PIP_ALL)
	touch $@

demo: $(BIN)/.installed
	$(BIN)/carboncp demo

# ruff (lint + format), the layer contracts (import-linter, pyproject [tool.importlinter]),
# mypy over the runtime, and vermin: nothing newer than Python 3.10 (requires-python; JetPack 6
# ships 3.10), so a 3.11+ module, member or syntax fails here rather than on a Jetson.
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/vermin --target=3.10- --no-tips --violations --quiet \
		runtime tooling firmware_bridge models tests bench tools

# mosquitto, g++, openssl: installed with apt when root, else one line naming the command.
system-tools:
	bash tools/system-tools.sh

test-py: $(BIN)/.installed system-tools
	$(BIN)/python -m pytest

# tflite-runtime 2.14.0 needs numpy<2, so it cannot share the main venv (docs/METHOD.md Appendix A):
# the LiteRT-runner tests run again in their own small venv, against a bundle the main venv exports.
$(TFLITE_VENV)/.installed: pyproject.toml
	test -x $(TFLITE_VENV)/bin/python || $(PY) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/python -m pip install -q --upgrade pip
	$(TFLITE_VENV)/bin/python -m pip install "tflite-runtime==2.14.0" "numpy<2" pytest pytest-timeout -e .
	touch $@

test-tflite-runtime: $(BIN)/.installed $(TFLITE_VENV)/.installed
	$(BIN)/python -m tests.tiny_bundle .cache/tiny-bundle
	CARBONCP_TEST_BUNDLE=.cache/tiny-bundle CARBONCP_REQUIRE_TFLITE_RUNTIME=1 \
		$(TFLITE_VENV)/bin/python -m pytest -p no:cacheprovider tests/runtime/test_litert_runner.py

# The device runtime on an emulated Debian 12 arm64 (Raspberry Pi OS Bookworm 64-bit), as root:
# the runtime extra from this checkout in a chroot under qemu, the LiteRT-runner tests with both
# interpreters, heads and decisions against amd64's, `carboncp run` against an amd64 serve
# (tools/arm64/run.sh; the root is cached under ~/.cache/carboncp/arm64). Not root: one line, exit 0.
test-arm64: $(BIN)/.installed system-tools
	bash tools/arm64/run.sh

# Tails on a real NVIDIA Triton Inference Server (docs/TRITON.md): the tritonserver binary and
# its Python backend come in nvidia-pytriton 0.7.0's wheel (CPU only here), which needs numpy<2,
# so it gets its own venv, made from Debian's python3.11: the backend's stub links the system
# libpython, and a venv of another 3.11 build fails in the stub (`_thread.RLock` has no
# `_recursion_count`). The tails run there with ai-edge-litert. The main venv exports a
# 224 x 224 tiny bundle and its repository; the tests start tritonserver and `carboncp serve`
# on loopback ports and drive both with `carboncp run`.
TRITON_PY ?= /usr/bin/python3.11
$(TRITON_VENV)/.installed:
	test -x $(TRITON_PY) || { apt-get update -qq && apt-get install -y -qq python3.11 python3.11-venv; }
	$(TRITON_PY) -c 'import ensurepip, venv' 2>/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq python3.11-venv; }
	test -x $(TRITON_VENV)/bin/python || $(TRITON_PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "ai-edge-litert==2.3.0"
	touch $@

test-triton: $(BIN)/.installed $(TRITON_VENV)/.installed
	$(BIN)/python -m tests.triton_bundle .cache/triton-bundle
	$(BIN)/carboncp export --quiet --triton-repo .cache/triton-repo .cache/triton-bundle
	CARBONCP_TEST_BUNDLE=.cache/triton-bundle CARBONCP_TRITON_REPO=.cache/triton-repo \
		CARBONCP_TRITON_VENV=$(TRITON_VENV) \
		$(BIN)/python -m pytest -p no:cacheprovider tests/triton/test_triton.py

test: system-tools lint test-py test-tflite-runtime test-arm64 test-triton

# Speed and memory targets: each benchmark prints ratios against a baseline measured in the same run.
bench: $(BIN)/.installed
	test -f models/resnet18/table/table.json || \
		$(BIN)/carboncp build --model resnet18 --out models/resnet18 --device-profile rpi4
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.heads models/resnet18
	OMP_NUM_THREADS=1 $(BIN)/python -m bench.decision models/resnet18
	$(BIN)/python -m bench.loop --bundle models/resnet18
	$(BIN)/python -m bench.offload --bundle models/resnet18
	$(BIN)/python -m bench.costs
	$(BIN)/python -m bench.bridge_decode

# Mutation testing of the decision code (conformal, costs, policy, table, carbon payloads):
# plants one small bug at a time, in memory, and runs that module's tests; writes the
# survivors to docs/MUTATION.md and prints `killed K of N (P%)` last. About 30-40 min on
# the 2-core host, so it is not part of `make test`.
mutation: $(BIN)/.installed
	$(BIN)/python tools/mutate.py

clean:
	rm -rf $(VENV) $(TFLITE_VENV) $(TRITON_VENV) .cache build *.egg-info
