# Two commands for a new user (see README.md): `make train` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ARGS ?=

.PHONY: train test test-slow benchmark peers lint clean

# torch first: a machine without an NVIDIA GPU gets the CPU build (a local wheel when pip's
# find-links has one, else PyTorch's CPU index), so the project install never pulls multi-GB CUDA wheels.
# $(call venv_with_torch,DIR): a venv in DIR with torch installed that way.
define venv_with_torch
	$(PYTHON) -m venv $(1)
	@if $(1)/bin/python -m pip show torch >/dev/null 2>&1; then :; \
	elif command -v nvidia-smi >/dev/null 2>&1; then $(1)/bin/python -m pip install torch; \
	elif $(1)/bin/python -m pip install --no-index --no-deps torch==2.13.0 2>/dev/null; then $(1)/bin/python -m pip install torch==2.13.0; \
	else $(1)/bin/python -m pip install torch --index-url https://download.pytorch.org/whl/cpu; fi
endef

$(VENV)/.torch:
	$(call venv_with_torch,$(VENV))
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[dev]"
	touch $@

train: $(VENV)/.installed
	$(PY) launch/train_ppo.py $(ARGS)

# Two tests at a time on two cores (pytest-xdist; up to 4 on bigger machines): most tests wait on a
# subprocess or run one torch thread, so the suite takes ~5.5 minutes here instead of ~9.
test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses 4 $(ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(ARGS)

benchmark: $(VENV)/.installed
	$(PY) launch/benchmark.py $(ARGS)

# The peers that `launch/benchmark.py --peer-python .peers/bin/python` runs beside ours, in a venv of
# their own (not our dependencies): SB3 with rl-zoo's tuned hyperparameters, and Box2D for LunarLander;
# EnvPool and ale-py for launch/peer_envpool.py.
PEERS ?= .peers
$(PEERS)/.installed:
	$(call venv_with_torch,$(PEERS))
	$(PEERS)/bin/python -m pip install stable-baselines3 rl-zoo3 "gymnasium[box2d]" envpool "ale-py>=0.11"
	touch $@

peers: $(PEERS)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(PEERS) runs
