# The two commands a fresh machine needs: `make demo` and `make test`. Everything else hangs off `venv`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Debian packages the tests and the demo use: speech synthesis, and ffmpeg as an independent decoder.
APT_PACKAGES := espeak-ng sox ffmpeg
APT_COMMANDS := espeak-ng sox ffmpeg

.PHONY: venv system-deps test lint unit demo bench clean

venv: $(STAMP)

# torch first, pinned by constraints.txt to the 2.13.0 CPU wheel that lies on this machine's disk;
# anything else would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -U pip
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

system-deps:
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: venv system-deps
	$(BIN)/pytest -q

test: lint unit

demo: venv system-deps
	bash docker/demo.sh

bench: venv system-deps
	$(BIN)/python benchmarks/prepare.py

clean:
	rm -rf $(VENV) demo bench-out .mypy_cache .ruff_cache .pytest_cache
