# Two-command quickstart: `make serve` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO   ?= var/demo
HOST   ?= 127.0.0.1
PORT   ?= 8000
# inductor's cache for the compiled decode step: the world build fills it while its model trains (prewarm)
STEER_COMPILE_CACHE_DIR ?= var/cache/inductor

.PHONY: setup test lint format serve demo bench clean

# What `make serve` needs: the package and its runtime dependencies.
$(BIN)/steer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# Pin torch first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install "torch==$(TORCH_VERSION)" -e .
	touch $(BIN)/steer

# What `make test` adds: test tools, linters and the real clients the tests drive.
$(VENV)/.dev: $(BIN)/steer
	$(BIN)/pip install "torch==$(TORCH_VERSION)" -e ".[dev]"
	touch $(VENV)/.dev

setup: $(VENV)/.dev

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python tools/import_cycles.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/pytest

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

bench: $(BIN)/steer $(DEMO)/report.json
	HF_HUB_OFFLINE=1 $(BIN)/steer bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
