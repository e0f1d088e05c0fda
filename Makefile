# Two entry points: `make repro` (set up + run the pipeline) and `make test` (set up + run the tests).
# Both install .venv from requirements.lock (every package pinned with hashes), then the project
# itself with --no-deps. `make lock` regenerates the lock from pyproject.toml (see "Lock" below).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PIP_VERSION := 26.3
SHARED := $(abspath ../shared)

# Local mirrors beside the project, used when present (no internet needed); otherwise the
# stages download from PhysioNet / MedMNIST / CIFAR-10. Set these variables yourself to use other mirrors.
ifneq ($(wildcard $(SHARED)/data/mitdb/RECORDS),)
export ECG_MIRROR ?= $(SHARED)/data/mitdb
endif
ifneq ($(wildcard $(SHARED)/data/nstdb/bw.hea),)
export NSTDB_MIRROR ?= $(SHARED)/data/nstdb
endif
ifneq ($(wildcard $(SHARED)/data/medmnist),)
export MEDMNIST_MIRROR ?= $(SHARED)/data/medmnist
endif
ifneq ($(wildcard $(SHARED)/data/cifar10/cifar10_jpg.zip),)
export CIFAR10_ZIP ?= $(SHARED)/data/cifar10/cifar10_jpg.zip
endif
ifneq ($(wildcard $(SHARED)/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5),)
export SQUEEZENET_WEIGHTS ?= $(SHARED)/weights/squeezenet_weights_tf_dim_ordering_tf_kernels_notop.h5
endif
export PATH := $(abspath $(BIN)):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

# pytest exits 5 when it selects no test; that is not a failure here.
PYTEST = python -m pytest -q
define run_pytest
	$(PYTEST) $(1) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests selected" || exit $$rc; }
endef

.PHONY: setup repro test test-fast test-slow browser vega lock lock-upgrade dvc-fresh-check bench

$(BIN)/.installed: $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	touch $@

setup: $(BIN)/.installed

repro: setup
	dvc repro

# The README's test command, and what .ci/run calls: every test, fast and slow.
test: setup browser vega
	$(call run_pytest,-m "slow or not slow")

# The quick loop: pyproject's addopts deselect slow-marked tests.
test-fast: setup
	$(call run_pytest,)

test-slow: setup browser vega
	$(call run_pytest,-m slow)

# The browser test (tests/test_report_browser.py) needs Debian's chromium; it skips without it.
# Installed here, never by a test: as root (or with passwordless sudo) when /usr/bin/chromium
# is missing. A failed install only warns.
browser:
	@if [ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	else echo "chromium missing and not root: the browser test will skip"; exit 0; fi; \
	{ $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; } \
	|| echo "warning: installing chromium failed; the browser test will skip"

# Vega, Vega-Lite and Vega-Embed for the offline `dvc plots show` page (pipeline/plots.py) and its
# test: exact versions and integrity hashes in .vega/package-lock.json, installed with `npm ci` into
# .vega/node_modules. Without npm (and not root to apt-get it) the test skips; a failure only warns.
VEGA := .vega
vega:
	@if [ -f $(VEGA)/node_modules/.installed ] && [ $(VEGA)/node_modules/.installed -nt $(VEGA)/package-lock.json ]; then exit 0; fi; \
	if ! command -v npm >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm \
	    || echo "warning: installing npm failed"; fi; fi; \
	if ! command -v npm >/dev/null 2>&1; then echo "npm missing: the offline dvc plots test will skip"; exit 0; fi; \
	{ npm ci --prefix $(VEGA) --ignore-scripts --no-audit --no-fund && touch $(VEGA)/node_modules/.installed; } \
	|| echo "warning: npm ci failed; the offline dvc plots test will skip"

# Lock: requirements.lock pins every package (Python 3.11, Linux x86_64) with hashes, compiled by
# uv from pyproject.toml's ranges (+ the dev extra). `make lock` keeps the existing pins and only
# adds/removes what pyproject.toml's changes require; `make lock-upgrade` moves everything to the
# newest versions within the ranges. Results (dvc.lock md5s, metrics) depend on these versions:
# after an upgrade, rerun the pipeline and `make dvc-fresh-check`.
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV_COMPILE = $(TOOLS)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --custom-compile-command "make lock" -q -o $(LOCK)

$(TOOLS)/bin/uv:
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q uv==$(UV_VERSION)

lock: $(TOOLS)/bin/uv
	$(UV_COMPILE)

lock-upgrade: $(TOOLS)/bin/uv
	$(UV_COMPILE) --upgrade

# A fresh clone of the committed tree reruns ingest_ecg + prepare_ecg; the md5s of prepare_ecg's
# outputs must be those the committed dvc.lock records (ingest_ecg's are only reported: its output
# records where the data came from, so another mirror/download legitimately changes it).
# Uses this .venv and the mirror variables above. (dvc autostages dvc.lock, hence diff against HEAD.)
FRESH ?= $(abspath .fresh-check)
define FRESH_COMPARE
import sys, yaml
new, old = (yaml.safe_load(open(p)) for p in sys.argv[1:3])
outs = lambda lock, st: {o["path"]: o.get("md5") for o in lock["stages"][st].get("outs", [])}
bad = 0
for st in ("ingest_ecg", "prepare_ecg"):
    for path, md5 in outs(old, st).items():
        got = outs(new, st).get(path)
        same = got == md5
        bad += (not same) and st == "prepare_ecg"
        print(f"{st}: {path}: {'ok' if same else 'DIFFERS'} (dvc.lock {md5}, fresh clone {got})")
sys.exit(f"dvc-fresh-check: prepare_ecg outputs differ from dvc.lock" if bad else 0)
endef
export FRESH_COMPARE
dvc-fresh-check: setup
	rm -rf $(FRESH)
	git clone -q . $(FRESH)
	cd $(FRESH) && dvc repro --single-item ingest_ecg prepare_ecg
	git -C $(FRESH) show HEAD:dvc.lock > $(FRESH).committed.lock
	python -c "$$FRESH_COMPARE" $(FRESH)/dvc.lock $(FRESH).committed.lock
	rm -rf $(FRESH) $(FRESH).committed.lock

bench: setup
	python benchmarks/ecg_data.py
