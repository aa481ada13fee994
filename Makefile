# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# Without a GPU, install PyTorch's CPU build first so the dependency `torch>=2.4` does not pull
# a multi-GB CUDA build. Override TORCH_SPEC to choose another build or version.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo sft-demo test browser bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing the default PyTorch build"; \
	else \
		$(PY) -m pip install -q "$(TORCH_SPEC)" || $(PY) -m pip install -q "torch>=2.4"; \
	fi
	$(PY) -m pip install -q -e ".[test,export,datatrove]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lmforge train --config configs/demo.yaml   # a new folder under runs/ each time; runs/latest links to it

# Chat fine-tuning of the newest LM run (runs/latest) on conversations built from the embedded
# plays; trains the demo model first when there is none.
sft-demo: install
	@test -f runs/latest/model.safetensors || $(MAKE) demo
	$(VENV)/bin/lmforge sft runs/latest --demo-data

# The dashboard's browser tests drive Debian's Chromium (never a downloaded browser). As root (CI),
# install it when missing; otherwise the tests fail and say how to install it.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian's chromium for the browser tests"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
		else \
			echo "chromium is missing: the browser tests will fail; install it with: sudo apt-get install chromium"; \
		fi; \
	fi

test: install browser
	$(PY) -m pytest

bench: install
	$(PY) benchmarks/shakespeare_char.py --data ../shared/data/tinyshakespeare/input.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
