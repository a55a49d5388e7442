# alignchat: the two set-up commands of the README, plus a few conveniences.
#   make run   create the venv, install, fetch the default model (SHA-256 checked), start the chat server + web UI
#   make test  create the venv, install with test extras (and Chromium, bubblewrap), run the suite (slow tests excluded)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= smollm2-135m-instruct
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run chat test test-all install install-test system browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "pip==26.2.1"  # 26.3 refuses sdists with direct-URL dependencies (bigbench), which fetch downloads

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(BIN)/alignchat models pull $(MODEL)
	$(BIN)/alignchat serve --model $(MODEL) --host $(HOST) --port $(PORT)

chat: install
	$(BIN)/alignchat models pull $(MODEL)
	$(BIN)/alignchat chat --model $(MODEL)

# Debian's packages the tests need, installed when missing and apt is usable: Chromium + ChromeDriver drive the
# browser tests, bubblewrap isolates the code sandbox (alignchat/sandbox.py), wordnet-base is the English
# thesaurus for the library's Boolean strings
SYSTEM_PACKAGES := chromium chromium-driver bubblewrap wordnet-base
system:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v bwrap >/dev/null && \
	  test -f /usr/share/wordnet/index.noun || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	      || echo "could not install $(SYSTEM_PACKAGES); browser tests will be skipped, the sandbox falls back"; \
	    else echo "install $(SYSTEM_PACKAGES) for the browser tests and the full sandbox"; fi; }

browser: system

test: install-test system
	$(BIN)/alignchat models pull $(MODEL)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install-test system
	$(BIN)/alignchat models pull $(MODEL)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) .pytest_cache
