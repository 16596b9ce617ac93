# Two commands on a fresh machine: `make demo` (main job) and `make test`.
# Both build the project's own virtual environment from requirements.txt first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: help install bench-deps demo test bench bench-smoke figures gpu-check clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

demo: install
	$(PY) sample.py

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

test: install $(VENV)/.test-installed
	$(PY) -m pytest

bench-deps: install
	$(VENV)/bin/pip install -q --no-deps -r requirements-bench.txt  # torch comes from requirements.txt

bench: bench-deps
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/policies.py --timing

SMOKE_DIR ?= /tmp/fastflow-bench-smoke
# The benchmark end to end at tiny sizes, outputs in $(SMOKE_DIR): a plumbing check, not a measurement
# (8 samples, one timed round, so it prints its timings as unrepeated and judges no target).
# It took 60 s on 2026-12-02 on the project's 2-core CPU with other jobs running, on one thread (bench.py's
# default --threads 1); a run with torch's two threads on a loaded machine once took 10 min 39 s.
bench-smoke: install
	$(PY) benchmarks/bench.py --n 8 --batch-size 8 --repeats 1 --warmup 1 --quick --exact-steps 20 \
		--out-json $(SMOKE_DIR)/bench.json --out-plot $(SMOKE_DIR)/pareto.png

# The committed figures the docs show, each from the command that owns it: results/policies.png redrawn
# from results/policies.json (nothing re-run) and docs/euler_vs_fastflow.png from a demo run (30 s on
# the 2-core CPU). results/pareto.png and the other benchmark figures are drawn by the
# benchmarks that measure them.
figures: install
	$(PY) benchmarks/policies.py --replot
	$(PY) sample.py --quiet --out docs/euler_vs_fastflow.png

clean:
	rm -rf $(VENV) .pytest_cache

# On a GPU machine: its own python3, no venv and no network (scripts/gpu_check.py says what it runs).
gpu-check:
	$(PYTHON) scripts/gpu_check.py

help:  # the targets, one line each
	@echo "make demo         build .venv from requirements.txt, then python sample.py: Euler-50 against FastFlow"
	@echo "                  on the shipped MNIST DiT, a table and outputs/euler_vs_fastflow.png"
	@echo "make test         build .venv with requirements-test.txt, then python -m pytest"
	@echo "make install      build .venv from requirements.txt only"
	@echo "make bench-deps   add requirements-bench.txt (flow-matching) to .venv"
	@echo "make bench        benchmarks/bench.py, then benchmarks/policies.py --timing (long; writes results/)"
	@echo "make bench-smoke  benchmarks/bench.py end to end at tiny sizes into $(SMOKE_DIR) (about a minute;"
	@echo "                  unrepeated timings and no verdicts: a plumbing check, not a measurement)"
	@echo "make figures      redraw results/policies.png from results/policies.json and docs/euler_vs_fastflow.png"
	@echo "                  from a demo run (the committed figures the docs show)"
	@echo "make gpu-check    on a GPU machine, with its own python3 (torch, numpy, einops, tqdm, matplotlib, pytest;"
	@echo "                  no venv, no network): CUDA tests, GPU and training overhead, the main job's timing,"
	@echo "                  in at most about 8 minutes, into outputs/gpu_check.json"
	@echo "make clean        remove .venv and .pytest_cache"
