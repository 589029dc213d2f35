# The two set-up-free targets are `make lab` and `make test`: both create .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The tested CPU build. A plain `pip install torch` on Linux pulls a multi-GB CUDA build; on a machine
# without a local wheel, point pip at the CPU index: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
LAB_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: lab test lint bench clean venv figures

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev,onnx]'
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/atrous lab $(LAB_ARGS)

test: $(STAMP) lint
	$(BIN)/python -m pytest -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/atrous bench

# The README's figures come from a quick lab run.
figures: $(STAMP)
	$(BIN)/atrous lab --preset quick --out runs/lab-figures
	mkdir -p docs/figures
	cp runs/lab-figures/ex1_supports.png runs/lab-figures/ex1_erf_trained.png runs/lab-figures/ex3_scale_curves.png \
	   runs/lab-figures/ex4_iou_by_size.png runs/lab-figures/ex5_rf_vs_accuracy.png docs/figures/

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .hypothesis
