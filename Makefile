# HybriMamba: `make demo` and `make test` are all a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATAROOT ?=
OUT ?= demo_output

.PHONY: help demo test lint mutation-test fresh-machine-test bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 22

$(VENV)/.installed: requirements.txt requirements-extra.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	bash tests/install_extras.sh $(VENV)/bin/pip
	touch $@

# test-only references (basicsr's metric functions), without their own dependencies
$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(VENV)/bin/pip install --no-deps -r requirements-test.txt
	touch $@

demo: $(VENV)/.installed ## train a small model on built-in faces, test it, compare with bicubic (DATAROOT=... for your faces)
	$(PY) -m utils.demo --out $(OUT) $(if $(DATAROOT),--dataroot $(DATAROOT))

test: $(VENV)/.installed-test ## run the test suite
	$(PY) -m pytest

lint: $(VENV)/.installed ## ruff check . (rules and line length in pyproject.toml)
	$(PY) -m ruff check .

mutation-test: $(VENV)/.installed-test ## apply realistic bugs one at a time in a copy; the tests guarding each must fail
	$(PY) tests/mutations.py

fresh-machine-test: ## clone, install requirements.txt into a brand-new venv, import everything, run param.py
	bash tests/fresh_machine.sh

bench: $(VENV)/.installed ## run the scan, training and metric benchmarks (prints tables)
	$(PY) bench/bench_scan.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_metrics.py

clean: ## remove demo and test outputs (never .venv, ckpt/ or check_points/)
	rm -rf $(OUT) .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
