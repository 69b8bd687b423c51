# mouse-facelift: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
# CPU machines get the torch/torchvision pair that works without CUDA; override on other machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
KERNEL := mousefacelift

.PHONY: setup demo test test-fast test-gpu lab bench clean-venv git-drivers

setup: $(STAMP) git-drivers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (mousefacelift)"
	touch $(STAMP)

# nbdime's git diff/merge drivers for notebooks, registered with the absolute path of this checkout's
# executables: `git diff` then works in any shell, with or without .venv/bin on PATH.
NBBIN := $(abspath $(BIN))
git-drivers: $(STAMP)
	@$(BIN)/nbdime config-git --enable
	@git config diff.jupyternotebook.command '"$(NBBIN)/git-nbdiffdriver" diff'
	@git config merge.jupyternotebook.driver '"$(NBBIN)/git-nbmergedriver" merge %O %A %B %L %P'
	@git config difftool.nbdime.cmd '"$(NBBIN)/git-nbdifftool" diff "$$LOCAL" "$$REMOTE" "$$BASE"'
	@git config mergetool.nbdime.cmd '"$(NBBIN)/git-nbmergetool" merge "$$BASE" "$$LOCAL" "$$REMOTE" "$$MERGED"'

demo: setup
	$(BIN)/mfl run params/demo.yaml

test: setup
	$(BIN)/python -m pytest -q --durations=15

# every test not marked slow (the end-to-end notebook run, training runs, torchrun launches): about 2 minutes
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-gpu: setup
	$(BIN)/python -m pytest -q -m gpu

# JupyterLab on the repository: notebooks/ to open, runs/ to read executed notebooks and artifacts
lab: setup
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)"

bench: setup
	$(BIN)/mfl bench

clean-venv:
	rm -rf $(VENV)
