# mouse-facelift: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# CPU machines get the torch/torchvision pair that works without CUDA; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
KERNEL := mousefacelift

.PHONY: setup demo test test-fast test-gpu lab bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (mousefacelift)"
	-$(BIN)/nbdime config-git --enable
	touch $(STAMP)

demo: setup
	$(BIN)/mfl run params/demo.yaml

test: setup
	$(BIN)/python -m pytest -q --durations=15

# every test not marked slow (the end-to-end notebook run, training runs, torchrun launches): about 2 minutes
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

lab: setup
	$(BIN)/jupyter lab notebooks/

bench: setup
	$(BIN)/mfl bench

clean-venv:
	rm -rf $(VENV)
