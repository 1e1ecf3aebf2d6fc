# Two commands for a new user (see README.md): `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

.PHONY: train test test-slow benchmark lint clean

# torch first: a machine without an NVIDIA GPU gets the CPU build (a local wheel when pip's
# find-links has one, else PyTorch's CPU index), so the project install never pulls multi-GB CUDA wheels.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	@if $(PIP) show torch >/dev/null 2>&1; then :; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
	elif $(PIP) install --no-index --no-deps torch==2.13.0 2>/dev/null; then $(PIP) install torch==2.13.0; \
	else $(PIP) install torch --index-url https://download.pytorch.org/whl/cpu; fi
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

train: $(VENV)/.installed
	$(PY) launch/train_ppo.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

benchmark: $(VENV)/.installed
	$(PY) launch/benchmark.py $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
