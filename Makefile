# Short commands for a fresh clone: everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test demo benchmark clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

test: venv
	$(BIN)/python -m pytest tests -q

demo: venv
	$(BIN)/python tools/demo.py

benchmark: venv
	$(BIN)/python tools/benchmark.py

clean-demo:
	rm -rf demo
