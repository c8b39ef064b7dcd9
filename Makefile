# Lightbox: `make run` starts a server with embedded defaults, `make test` runs the suite.
# Settings pass through the environment or the command line, e.g.
#   make run LIGHTBOX_DICOM_PORT=104 LIGHTBOX_HTTP_PORT=8042 LIGHTBOX_DATA_DIR=/srv/lightbox

PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install run test bench clean fuzz

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

# Fuzz import, C-STORE, STOW-RS and decoding with mutated corpus files (tests/fuzz):
# LIGHTBOX_FUZZ_EXAMPLES inputs per target, new ones each run; the figures (inputs,
# crashes, hangs, lost) go to LIGHTBOX_FUZZ_REPORT (default: lightbox-fuzz-report.json
# in the temporary folder), failing inputs to LIGHTBOX_FUZZ_ARTIFACTS.
#   make fuzz LIGHTBOX_FUZZ_EXAMPLES=20000
LIGHTBOX_FUZZ_EXAMPLES ?= 5000
LIGHTBOX_FUZZ_DERANDOMIZE ?= 0
fuzz: install
	LIGHTBOX_FUZZ_EXAMPLES=$(LIGHTBOX_FUZZ_EXAMPLES) LIGHTBOX_FUZZ_DERANDOMIZE=$(LIGHTBOX_FUZZ_DERANDOMIZE) \
		$(VENV)/bin/python -m pytest -m fuzz tests/fuzz --timeout=0 -p no:cacheprovider -q

bench: install
	$(VENV)/bin/python -m benchmarks.ingest_compare

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
