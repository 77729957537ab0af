# Every target creates its own environment in .venv (Python 3.10+ with venv and a C compiler;
# without a compiler the pure-Python parser is used).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.genesis-installed

.PHONY: demo test bench bench-smoke lint build clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "Cython>=3.0" "setuptools>=77" wheel
	$(BIN)/python -m pip install -q --no-build-isolation -e '.[dev]'
	touch $@

# Rebuild the extension in place whenever _parser.pyx changed (a no-op otherwise).
build: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace

# The main job: the demo application against the embedded FreeSWITCH simulator.
demo: build
	$(BIN)/python -m genesis.demo $(DEMO_ARGS)

# The whole test suite. Redis-backed tests need redis-server: installed here when missing
# and we are root on Debian; otherwise they are skipped with a reason (CI forbids skipping).
test: build
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || true; }
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: build
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-columns=min,median,mean,ops,rounds $(PYTEST_ARGS)

# Every bench once, untimed and without its targets: CI's guard against benches that rot.
bench-smoke: build
	$(BIN)/python -m pytest bench --benchmark-disable -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check genesis tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build genesis/_parser.c genesis/_parser*.so
