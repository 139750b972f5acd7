# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0
RECIPE ?= manifests/demo.toml
DEMO_DIR ?= demo_data
OUT ?= benchmarks/gpu-results

.PHONY: install demo paper demo-data filter portraits shards fit sample report test test-fast bench bench-gpu lint clean

install: .venv/.installed

.venv/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet --user uv
	$(UV) sync --frozen
	@touch $@

demo-data: install
	.venv/bin/dataengine demo-data --out $(DEMO_DIR)

filter: install
	.venv/bin/dataengine filter $(RECIPE)

portraits: install
	.venv/bin/dataengine synth-portraits $(RECIPE)

shards: install
	.venv/bin/dataengine shards $(RECIPE)

fit: install
	.venv/bin/trainer fit manifests/train_debug.toml

demo: install
	bash scripts/demo.sh

# The paper's whole run in one command (docs/reproduce.md): the steps, which are complete and the projected
# GPU-hours up front, then every step that is not complete; after a failure the same command goes on from
# there. BENCH=folder/bench_gpu.json projects with measured rates; ARGS passes more options (--dry-run, --nodes).
paper: install
	.venv/bin/dataengine reproduce manifests/openve.toml --train manifests/train_mive_14b.toml $(if $(BENCH),--bench $(BENCH)) $(ARGS)

# The whole suite; pytest prints its 20 slowest tests at the end, so creeping slowness shows in every run.
test: install
	$(PY) -m pytest -q --durations=20

# The suite without the tests marked slow (the Ray CLI end-to-end runs, kill-resume, cluster, multi-node,
# torchrun): every unit and in-process test, a few minutes. Markers: ray, process, fit, slow (pyproject.toml).
test-fast: install
	$(PY) -m pytest -q -m "not slow" --durations=20

bench: install
	$(PY) -m benchmarks.run

# Every model at its real size on one GPU, at most 8 minutes, nothing downloaded (benchmarks/RESULTS.md).
bench-gpu: install
	$(PY) -m benchmarks.bench_gpu $(OUT)

lint: install
	.venv/bin/ruff check dataengine trainer pipelines tests benchmarks
	.venv/bin/ruff format --check dataengine trainer pipelines tests benchmarks

clean:
	rm -rf $(DEMO_DIR) shards runs manifests/demo
