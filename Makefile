# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip -q --disable-pip-version-check
OUT ?= runs/demo

.PHONY: demo test lint bench clean

$(BIN)/rgvlm: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip  # pip 23's resolver fails on s3fs's exact fsspec pin
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/rgvlm
	$(BIN)/rgvlm run --config local --out $(OUT)

lint: $(BIN)/rgvlm
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m tests.shards 2 --durations=15  # two pytest processes side by side (tests/shards.py)

bench: $(BIN)/rgvlm
	for f in bench/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) runs
