# TheraPref set-up. `make demo` runs the main job; `make test` runs the whole test suite.
# Both create .venv and install the pinned requirements when missing.
# Note: llama-cpp-python compiles llama.cpp from source on a fresh machine (about 4 minutes on
# 2 cores); pip caches the wheel, so later installs take seconds.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo app test lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip wheel
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: Chromium (browser tests) and the PostgreSQL server binaries.
system-deps:
	@command -v chromium >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium postgresql; \
	  else echo "Install Debian packages chromium and postgresql (sudo apt-get install chromium postgresql)"; exit 1; fi; }

demo: install
	$(VENV)/bin/therapref demo

app: install
	$(VENV)/bin/therapref app

# The suite runs with HOME set to a fresh empty folder, as on a new machine: nothing in your home
# folder (an accelerate or Hugging Face config) can make a test pass here and fail elsewhere.
test: install system-deps
	@test_home=$$(mktemp -d) && trap 'rm -rf "$$test_home"' EXIT && \
	  env -u XDG_CONFIG_HOME -u XDG_CACHE_HOME -u HF_HOME HOME="$$test_home" $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	for f in bench/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
