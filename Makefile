# Lightbox: `make run` starts a server with embedded defaults, `make test` runs the suite.
# Settings pass through the environment or the command line, e.g.
#   make run LIGHTBOX_DICOM_PORT=104 LIGHTBOX_HTTP_PORT=8042 LIGHTBOX_DATA_DIR=/srv/lightbox

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/lightbox serve

test: install
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python -m benchmarks.ingest_compare

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
