# Two entry points (see README): `make demo` and `make test`. Both set up first.
VENV   ?= .venv
# ?= so that `PY=python3 make gpu-setup` (README) uses the environment's Python, not .venv's
PY     ?= $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
APT    := build-essential pkg-config libopencv-dev libturbojpeg0-dev
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup gpu-setup demo test bench clean
setup: $(STAMP)

$(STAMP):
	@# ffcv builds from source against OpenCV and libturbojpeg
	@dpkg -s $(APT) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT) >/dev/null; }
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PY) -m pip install -q -e '.[all]'
	@rm -f $(VENV)/.installed-*; touch $@

# On a GPU host whose Python already has a working torch (any CUDA 12.x or 13.x build). The GPU suite
# needs no install (python3 -m bench.gpu.lent runs from this tree, docs/gpu.md); this makes fastmix
# importable from elsewhere without touching torch or fetching anything (no build isolation, no
# dependencies: works offline), then tries the optional DALI build for torch's CUDA and the ffcv
# extra, which need the registry: offline they are reported and skipped, as the suite skips their rows.
# PY=python3 make gpu-setup   (the default PY is this repo's .venv, which `make setup` pins for CI)
gpu-setup:
	$(PY) -c 'import torch; print("keeping torch", torch.__version__, "CUDA", torch.version.cuda)'
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m pip install -q "$$($(PY) -c 'from loaders.dali import dali_package; print(dali_package()[0])')>=2.0" \
	  -e '.[ffcv]' || echo "gpu-setup: DALI and ffcv not installed (no registry?): their loader rows are skipped"

# each run trains into a new runs/cpu-smoke-convmixer_256_8/<start time>/ (runs/latest points at it),
# so a second `make demo` trains again rather than stopping at the first one's folder
demo: setup
	$(PY) tools/convert_subset.py --resume --verify
	$(PY) tools/train.py --recipe cpu-smoke --data data/demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) -m bench.convert
	$(PY) -m bench.calibration

clean:
	rm -rf data runs .pytest_cache .benchmarks
