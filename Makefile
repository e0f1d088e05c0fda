# Two entry points: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED := $(abspath ../shared)

# Local mirrors beside the project, used when present (no internet needed); otherwise the
# stages download from PhysioNet / MedMNIST. Set these variables yourself to use other mirrors.
ifneq ($(wildcard $(SHARED)/data/mitdb/RECORDS),)
export ECG_MIRROR ?= $(SHARED)/data/mitdb
endif
ifneq ($(wildcard $(SHARED)/data/medmnist),)
export MEDMNIST_MIRROR ?= $(SHARED)/data/medmnist
endif
ifneq ($(wildcard $(SHARED)/data/cifar10/cifar10_jpg.zip),)
export CIFAR10_ZIP ?= $(SHARED)/data/cifar10/cifar10_jpg.zip
endif
export PATH := $(abspath $(BIN)):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup repro test bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

test: setup
	python -m pytest -q

bench: setup
	python benchmarks/ecg_data.py
