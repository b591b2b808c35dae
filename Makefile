# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
STAMP   = $(VENV)/.multispike-installed

.PHONY: demo test install clean bench docs

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build on local disk, so nothing later pulls a multi-GB CUDA build. The interop
# peers (pyproject's `interop` extra: SpikingJelly, snnTorch, NeuroBench, tonic) go in with --no-deps for the same
# reason; the last line fails the install if a CUDA torch got in anyway.
$(STAMP): $(VENV)/bin/python pyproject.toml
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,events,nir]"
	$(PIP) install -q --no-deps $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['interop']))")
	$(PY) -c "import torch, sys; sys.exit(0 if '+cpu' in torch.__version__ or not torch.version.cuda else 'a CUDA torch was pulled in: ' + torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/multispike demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# The documentation site (mkdocs + mkdocstrings: API reference from the docstrings, the tutorials) into build/site;
# any warning fails the build. The tutorials' code runs in `make test` (tests/test_docs.py).
docs: $(STAMP)
	$(PIP) install -q -e ".[docs]"
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(PY) benchmarks/neurons.py

clean:
	rm -rf $(VENV) runs build *.egg-info
