# padam-lightning developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/wrn.yaml
SWEEP ?= configs/sweeps/optimizers.yaml
# CIFAR-10 as JPEGs (train/<class>/, test/<class>/), used by `make fit` when data/ has no CIFAR-10.
CIFAR_JPEG ?= ../shared/data/cifar10-jpeg.tar.gz
# Where it is extracted (configs/data/cifar10_jpeg.yaml reads it there), and the file that marks
# a complete extraction.
JPEG_DIR := data/cifar10-jpeg
JPEG_MARKER := .extracted
# The training command (tests replace it with a stand-in).
FIT ?= $(BIN)/padam-fit

.DEFAULT_GOAL := help
.PHONY: help install test lint format bench bench-gpu chaos fit fit-cpu demo tensorboard sweep report docs clean

help: ## List the targets.
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev,search]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package (editable) with the dev and search extras.

test: $(STAMP) ## Run the whole test suite (installs first when needed).
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy.
	$(BIN)/ruff check padam_lightning tests benchmarks
	$(BIN)/ruff format --check padam_lightning tests benchmarks
	$(BIN)/mypy

docs: $(STAMP) ## Build the documentation site into out/site/ (mkdocs, strict: a broken link fails).
	@# Not --quiet: mkdocs drops warnings it does not print, and --strict then passes.
	$(BIN)/mkdocs build --strict

format: $(STAMP) ## Apply ruff's fixes and formatting.
	$(BIN)/ruff check --fix padam_lightning tests benchmarks
	$(BIN)/ruff format padam_lightning tests benchmarks

bench: $(STAMP) ## Run every benchmark in benchmarks/ (ratios measured in one run; not tests).
	@# chaos.py is make chaos (13 min of training runs), not a speed or memory benchmark.
	@for script in benchmarks/[!_]*.py; do [ "$$script" = benchmarks/chaos.py ] && continue; echo "== $$script"; $(BIN)/python $$script || exit 1; done

chaos: $(STAMP) ## Stop tiny runs at 30 random and every chosen moment, resume, compare bit for bit.
	@# About 10-30 s per trial (several padam-fit start-ups). ARGS: e.g. --jobs 2, --keep,
	@# --moments val-first --kinds SIGKILL (benchmarks/chaos.py --help).
	$(BIN)/python benchmarks/chaos.py --trials 30 $(ARGS)

bench-gpu: ## On a CUDA machine: every GPU goal and a short ResNet-18 run (benchmarks/gpu.sh).
	bash benchmarks/gpu.sh

fit: $(STAMP) ## Train with CONFIG (default configs/wrn.yaml): padam-fit fit --config $(CONFIG).
	@# Offline machines: use the CIFAR-10 JPEG copy when there is no CIFAR-10 download in data/.
	@# The tarball is extracted into a temporary folder that is renamed only once tar has
	@# succeeded, with a marker file: an interrupted extraction is never trained on, it is
	@# removed and redone (also a partial folder left by versions without the marker).
	@if [ ! -d data/cifar-10-batches-py ] && [ -f "$(CIFAR_JPEG)" ]; then \
		if [ ! -f $(JPEG_DIR)/$(JPEG_MARKER) ]; then \
			echo "make fit: extracting $(CIFAR_JPEG) into $(JPEG_DIR)"; \
			rm -rf $(JPEG_DIR).partial && mkdir -p $(JPEG_DIR).partial && \
			tar -xzf "$(CIFAR_JPEG)" -C $(JPEG_DIR).partial && \
			touch $(JPEG_DIR).partial/$(JPEG_MARKER) && \
			rm -rf $(JPEG_DIR) && mv $(JPEG_DIR).partial $(JPEG_DIR) || { \
				rm -rf $(JPEG_DIR).partial; \
				echo "make fit: error: could not extract $(CIFAR_JPEG) into $(JPEG_DIR)" >&2; \
				exit 1; }; \
		fi; \
		echo "make fit: using the CIFAR-10 JPEGs of $(CIFAR_JPEG) in $(JPEG_DIR)"; \
		$(FIT) fit --config $(CONFIG) --config configs/data/cifar10_jpeg.yaml $(ARGS); \
	else \
		$(FIT) fit --config $(CONFIG) $(ARGS); \
	fi

fit-cpu: $(STAMP) ## A CPU-scale run (WRN-10-1, 10 epochs; prints its time estimate): configs/cpu.yaml.
	@# -f: the same Makefile also when it was named with make -f PATH from another folder.
	@$(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST)) fit CONFIG=configs/cpu.yaml ARGS="$(ARGS)"

demo: $(STAMP) ## Offline demo: a short run on synthetic data with real TensorBoard logs.
	$(BIN)/padam-fit fit --config configs/wrn.yaml --config configs/demo.yaml

tensorboard: $(STAMP) ## Serve the curves in lightning_logs/ (http://localhost:6006).
	$(BIN)/tensorboard --logdir lightning_logs

sweep: $(STAMP) ## Run a sweep (restartable): make sweep SWEEP=configs/sweeps/p_grid.yaml ARGS=--dry-run
	$(BIN)/padam-sweep $(SWEEP) $(ARGS)

report: $(STAMP) ## Figures and tables of a sweep's logs: make report SWEEP=configs/sweeps/p_grid.yaml
	$(BIN)/padam-report lightning_logs/$(basename $(notdir $(SWEEP))) --out reports/$(basename $(notdir $(SWEEP)))

clean: ## Remove caches (keeps .venv, data and lightning_logs).
	rm -rf .pytest_cache .mypy_cache .ruff_cache
