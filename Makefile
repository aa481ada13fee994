# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, install PyTorch's CPU build first so the dependency `torch>=2.4` does not pull
# a multi-GB CUDA build. Override TORCH_SPEC to choose another build or version.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default PyTorch build"; \
	else \
		$(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q "torch>=2.4"; \
	fi
	$(PY) -m pip install -q -e ".[test,export]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lmforge train --config configs/demo.yaml --out runs/demo

test: install
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/shakespeare_char.py --data ../shared/data/tinyshakespeare/input.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
