# Two commands for a fresh clone (README): `make demo` and `make test`.
# Both create .venv if missing and install the pinned requirements once; the install is
# skipped while .venv/.stamp matches the hash of the files that define it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP_KEY := $(shell cat requirements.txt requirements-extra.txt requirements-bench.txt setup.py | sha256sum | cut -c1-16)
STAMP := $(VENV)/.stamp-$(STAMP_KEY)
DATA := datasets/synthetic
DEMO_CFG := configs/Synthetic-PanopticSegmentation/fcn8s_rcnn_R_18_FPN_demo_synthetic.yaml
DEMO_OUT := output/demo

.PHONY: setup demo test lint data bench nuclei clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-extra.txt requirements-bench.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	# Detectron2 is published as sal-detectron2, a wheel tagged for Python 3.10 (pure Python).
	$(PIP) install -q --no-deps --only-binary=:all: --python-version 3.10 --upgrade \
		--target "$$($(PY) -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')" \
		sal-detectron2==0.7.2
	$(PIP) install -q --no-deps --no-build-isolation -e .
	# Packages used only for the data they ship (stardist's nuclei image), without their
	# heavy dependencies (see requirements-extra.txt).
	$(PIP) install -q --no-deps -r requirements-extra.txt
	# Peers that only benchmarks and reference tests compare against (not used by seg2).
	$(PIP) install -q -r requirements-bench.txt
	# pip check must be clean except for the data-only packages' deliberately absent
	# dependencies (stardist, solaris: installed --no-deps, only their data files are read).
	$(PIP) check > $(VENV)/pip-check.txt 2>/dev/null || true
	@if grep -v -e '^stardist ' -e '^solaris ' -e '^No broken' $(VENV)/pip-check.txt; then \
		echo "pip check found broken requirements (above)"; exit 1; fi
	rm -f $(VENV)/.stamp-* && touch $@

# Generated once; again only when the generator changes.
data: $(DATA)/.generated

$(DATA)/.generated: $(STAMP) datasets/prepare_synthetic.py $(wildcard seg2/data/synthetic/*.py)
	$(PY) datasets/prepare_synthetic.py --output $(DATA)
	touch $@

demo: data
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) OUTPUT_DIR $(DEMO_OUT)
	@echo "Results: $(DEMO_OUT)/eval_results.json   Training log: $(DEMO_OUT)/metrics.json   Overlays: $(DEMO_OUT)/vis/overview.png"

# Two pytest workers (most tests wait on one-thread tool subprocesses); a test class runs
# whole in one worker, so its setUpClass runs once.
TEST_WORKERS ?= 2
test: lint
	$(PY) -m pytest tests -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope

# ruff (lint and import order, configured in ruff.toml); make test runs it first.
lint: setup
	$(VENV)/bin/ruff check .

bench: data
	$(PY) tools/benchmark.py all --output output/bench --iters 200 --ims-per-batch 4 --eval-images 20 --num-images 100 --size 256

nuclei: setup
	$(PY) tools/nuclei_example.py --output-dir output/nuclei

clean:
	rm -rf output $(DATA) datasets/cache
