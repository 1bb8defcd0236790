# Short commands for a fresh clone: everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv test test-fast test-gpu lint demo demo-inria demo-refine demo-scenes benchmark clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

# Everything (what CI runs).
test: venv
	$(BIN)/python -m pytest tests -q

# Without the `slow` tier (1 GB files, huge images, kill trials, torchrun, stage chains, full-size FCN8): about 100 s on 2 cores
# (two pytest workers, one torch thread each).
test-fast: venv
	$(BIN)/python -m pytest tests -q -n 2 -m "not slow and not cuda"

# On a machine with an NVIDIA GPU: the CUDA-only code paths, then the benchmark on CUDA.
test-gpu: venv
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'make test-gpu: torch sees no CUDA GPU here')"
	$(BIN)/python -m pytest tests -q -m cuda -rs
	$(BIN)/python -m tools.benchmark --device cuda --backbone fcn8_vgg16 --mode 4 --image 2448 --size_p 508 --size_g 508 --sub_batch_size 6 --amp
	$(BIN)/python -m tools.benchmark --device cuda --backbone fpn_resnet18 --mode 4 --image 2448 --size_p 508 --size_g 508 --sub_batch_size 6 --amp

lint: venv
	$(BIN)/python -m ruff check .

demo: venv
	$(BIN)/python -m tools.demo

# The Inria stage scripts chained on synthetic tiles (a few minutes on a CPU).
demo-inria: venv
	$(BIN)/python -m tools.demo_inria

# The refinement stage on top of the demo's staged models: sum, hann and refined on held-out images
# (under 20 minutes on 2 cores; SEED=1 for another seed).
SEED ?= 0
demo-refine: venv
	$(BIN)/python -m tools.demo_refine --seed $(SEED)

# Own 4-band scenes with vector labels: rgb against rgbn on a held-out scene (under 15 minutes on 2 cores)
demo-scenes: venv
	$(BIN)/python -m tools.demo_scenes --seed $(SEED)

benchmark: venv
	$(BIN)/python -m tools.benchmark

clean-demo:
	rm -rf demo demo_inria
