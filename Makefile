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

.PHONY: lab test lint bench clean venv figures pictures gpu-check gpu-wheels test-torch

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

# The suite on another PyTorch than the pin, in a venv of its own: make test-torch TORCH=2.14.1 (or
# TORCH_VERSION=...). pyproject admits torch>=2.11 and a plain `pip install atrous` takes the newest; the pin
# alone is what CI runs. The venv ignores itself (its .gitignore says *), so it leaves the work tree clean.
TORCH ?= $(TORCH_VERSION)
TORCH_VENV := .venv-torch-$(TORCH)
PYTEST_ARGS ?= -n 2
test-torch:
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	echo '*' > $(TORCH_VENV)/.gitignore
	$(TORCH_VENV)/bin/python -m pip install -q torch==$(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(TORCH_VENV)/bin/python -m pip install -q -e '.[dev,onnx]'
	$(TORCH_VENV)/bin/python -c 'import sys, torch; v = torch.__version__.split("+")[0]; \
	  sys.exit(0 if v == "$(TORCH)" else f"test-torch: asked for torch $(TORCH), the venv has {v}")'
	$(TORCH_VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Real models (timm, torchvision, Hugging Face transformers, segmentation_models_pytorch; random weights, nothing
# downloaded) against the gradient oracle, in a side venv: .venv and `make test` never see these libraries, and
# tests/zoo skips itself where they are missing. torchvision must match torch, so the pair is pinned and
# installed before the extra. ZOO_ARGS= runs it on one core.
ZOO_VENV := .venv-zoo
ZOO_BIN := $(ZOO_VENV)/bin
ZOO_TORCH := 2.14.1
ZOO_TORCHVISION := 0.29.1
ZOO_STAMP := $(ZOO_VENV)/.installed
ZOO_ARGS ?= -n 2

.PHONY: test-zoo

$(ZOO_STAMP): pyproject.toml Makefile
	test -x $(ZOO_BIN)/python || $(PYTHON) -m venv $(ZOO_VENV)
	$(ZOO_BIN)/python -m pip install -q torch==$(ZOO_TORCH) torchvision==$(ZOO_TORCHVISION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(ZOO_BIN)/python -m pip install -q -e '.[dev,zoo]'
	touch $(ZOO_STAMP)

test-zoo: $(ZOO_STAMP)
	$(ZOO_BIN)/python -m pytest tests/zoo $(ZOO_ARGS)
	# the live torchvision checks (make test checks the committed reference they guard)
	$(ZOO_BIN)/python -m pytest tests/models/test_architectures.py -k torchvision -q

bench: $(STAMP)
	$(BIN)/atrous bench

# The README's figures come from a quick lab run.
figures: $(STAMP)
	$(BIN)/atrous lab --preset quick --out runs/lab-figures
	mkdir -p docs/figures
	cp runs/lab-figures/ex1_supports.png runs/lab-figures/ex1_erf_trained.png runs/lab-figures/ex2_regime_a_curves.png \
	   runs/lab-figures/ex4_iou_by_size.png runs/lab-figures/ex5_rf_vs_accuracy.png docs/figures/
	$(BIN)/python scripts/make_folder_dataset.py multiscale:size=96,n=64 runs/demo-data
	$(BIN)/atrous data stats folder:runs/demo-data --model dilated_unet --plot docs/figures/data_stats.png

# The README's receptive-field pictures: rf --plot, schedule --plot, and the rf --html page as a headless
# Chromium shows it while the mouse is on output pixel (2, 5) (apt-get install chromium).
CHROMIUM ?= chromium
pictures: $(STAMP)
	mkdir -p docs/figures runs
	$(BIN)/atrous rf unet:width=16,depth=2 --input 3,48,48 --at 3,40 --plot docs/figures/rf_unet.png > /dev/null
	$(BIN)/atrous schedule 2,2,2 --plot docs/figures/schedule_222.png > /dev/null
	$(BIN)/atrous rf resnet50 --input 3,224,224 --html runs/rf_resnet50.html > /dev/null
	$(CHROMIUM) --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1300,560 \
	  --screenshot=docs/figures/rf_page.png "file://$(CURDIR)/runs/rf_resnet50.html#hover=2,5"

# On a machine with a GPU: the test suite on the GPU, then `atrous bench gpu` (<= 6 min on one H100). It uses
# .venv or, where there is none, the python3 whose PyTorch sees the GPU; it never needs a package registry.
gpu-check:
	scripts/gpu-check

# Wheels a GPU image without a package registry may lack (kornia), for its Python; run where PyPI is reachable
# and bring wheels/ along. The versions are the ones the tests ran with here.
GPU_PYTHON_VERSION ?= 3.12
gpu-wheels: $(STAMP)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
	  --python-version $(GPU_PYTHON_VERSION) --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d wheels \
	  $$($(BIN)/python -m pip list --format=freeze | grep -iE '^(kornia|kornia[-_]rs)==')

clean:
	rm -rf $(VENV) $(ZOO_VENV) .venv-torch-* runs wheels .pytest_cache .ruff_cache .hypothesis
