# vlsearch: `make demo` runs the main job, `make test` runs the tests; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHARED ?= ../shared
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test serve lint bench-quality bench-speed bench-scale bench-update clean

setup: $(STAMP)

# torch first (the CPU build on disk), then the project with a constraint that keeps that torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/vlsearch demo --shared $(SHARED) --out work/demo

serve: setup
	$(BIN)/vlsearch serve --index work/demo/index

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900

lint: setup
	$(BIN)/ruff check src tests

bench-quality: setup
	$(BIN)/python benchmarks/quality.py --shared $(SHARED)

# wrk (Debian) is the HTTP load client of the http_wrk section; without it (no root, no apt)
# the section falls back to a raw-socket client.
bench-speed: setup
	command -v wrk >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk not installed: raw-socket client"
	$(BIN)/python benchmarks/speed.py --shared $(SHARED)

# 1M realistic vectors from work/index-full (+ work/full's click log); one thread, a few GiB
bench-scale: setup
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python benchmarks/scale.py

# a delta of 1,000 changed + 100 deleted real products applied under a search loop
bench-update: setup
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python benchmarks/live_update.py --shared $(SHARED)

clean:
	rm -rf work .pytest_cache
