# alignchat: the two set-up commands of the README, plus a few conveniences.
#   make run   create the venv, install, fetch the default model (SHA-256 checked), start the chat server + web UI
#   make test  create the venv, install with test extras, run the test suite (slow tests excluded)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL  ?= smollm2-135m-instruct
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run chat test test-all install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

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

test: install-test
	$(BIN)/alignchat models pull $(MODEL)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install-test
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) .pytest_cache
