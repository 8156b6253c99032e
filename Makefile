# Entry points. Every target installs what it needs, so each works on a fresh clone.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUNS ?= runs

.PHONY: install test test-thorough bench train-2l train-1l train-2l-bpe train-1l-bpe train-2l-mixed reproduce reproduce-small help pydocs train-2l-pydocs

# train PRESET into RUNS/PRESET, resuming it if it is already there (a finished run is kept)
define train
	@if [ -f $(RUNS)/$(1)/run.npz ]; then flag=--resume; else flag=; fi; \
	$(PYTHON) -m minitransformer.train --preset $(1) --out $(RUNS)/$(1) $$flag
endef

help:
	@echo "make train-2l   train the 2-layer attention-only model on natural text, show its phase change"
	@echo "make train-1l   the 1-layer control (no induction head can form)"
	@echo "make train-2l-bpe   the same on BPE tokens with trainable positions: a sharper rise (train-1l-bpe: its control)"
	@echo "make train-2l-pydocs   the same on a second kind of text: the prose of Python's documentation"
	@echo "make train-2l-mixed   fast demo, synthetic-assisted: half the windows repeated random tokens"
	@echo "make test       install the dev extras and run every test"
	@echo "make bench      time training steps against PyTorch on this machine"
	@echo "make wheel      build dist/minitransformer-*.whl (pip install it anywhere: NumPy, matplotlib, safetensors, threadpoolctl)"
	@echo "make reproduce  train every model family, write report/index.html (natural text, 2 cores: 57 min with OpenBLAS's own kernels, ~75 with OPENBLAS_CORETYPE=Haswell; README)"
	@echo "                SEEDS=3: seeds 0-2 of every model; ONLY=\"attn-only-1l attn-only-2l\": just those"
	@echo "make reproduce-small   the same with small synthetic models (~3 min): report-small/index.html"
	@echo "make natural-model   the natural-text 2-layer model exercises 06 and 16 also study (~3-4 min, once)"

install:
	$(PIP) install -q -e ".[dev]"
	@# PyTorch is only a reference for tests and the benchmark. Its CPU build is installed
	@# where this machine's wheel folder has it (its small dependencies come from the index);
	@# a plain PyPI torch would be a multi-GB CUDA build, so elsewhere those tests skip.
	-@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0+cpu" >/dev/null 2>&1 || \
		echo "(no PyTorch CPU wheel here: reference tests will be skipped; pip install -e .[torch] to run them)"

test: install
	$(PYTHON) -m pytest -q

test-thorough: install
	HYPOTHESIS_PROFILE=thorough $(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_engine.py

# make wheel: dist/minitransformer-VERSION-py3-none-any.whl, what `pip install` of it gets: the
# three packages; NumPy, matplotlib, safetensors, threadpoolctl (BPE tokens: the bpe extra).
# build/ goes first: setuptools would pack a module deleted here that is still in build/lib.
# tests/test_wheel.py builds one from a copy of the tree and runs the commands from a fresh venv.
.PHONY: wheel
wheel:
	rm -rf build
	$(PIP) wheel -q --no-deps -w dist .
	@ls -l dist/minitransformer-*.whl

train-2l: install
	$(call train,attn-only-2l)
	$(PYTHON) -m experiments.phase_change $(RUNS)/attn-only-2l \
		$$([ -f $(RUNS)/attn-only-1l/run.npz ] && echo --control $(RUNS)/attn-only-1l)

train-1l: install
	$(call train,attn-only-1l)
	$(PYTHON) -m experiments.phase_change $(RUNS)/attn-only-1l

# the same on a 2,048-token BPE of the same text with trainable positions: the sharper rise
# (docs/phase-change-search.md); the vocabulary is learned once (~30 s) and cached
train-2l-bpe: install
	$(call train,attn-only-2l-bpe)
	$(PYTHON) -m experiments.phase_change $(RUNS)/attn-only-2l-bpe \
		$$([ -f $(RUNS)/attn-only-1l-bpe/run.npz ] && echo --control $(RUNS)/attn-only-1l-bpe)

train-1l-bpe: install
	$(call train,attn-only-1l-bpe)
	$(PYTHON) -m experiments.phase_change $(RUNS)/attn-only-1l-bpe

# the second corpus: the prose of Python's documentation (Debian's python3-doc, pinned by hash
# in minitransformer/data.py). Installs the package where this runs as root with apt.
pydocs:
	@ls -d /usr/share/doc/python3*/html/_sources >/dev/null 2>&1 || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-doc; } >/dev/null 2>&1; } || \
	{ echo "python3-doc is not installed: as root, apt-get install python3-doc"; exit 2; }

# the 2-layer model and its 1-layer control on that corpus
train-2l-pydocs: install pydocs
	@for p in attn-only-1l attn-only-2l; do \
		if [ -f $(RUNS)/pydocs-$$p/run.npz ]; then flag=--resume; else flag=; fi; \
		$(PYTHON) -m minitransformer.train --preset $$p --corpus pydocs --out $(RUNS)/pydocs-$$p $$flag || exit 1; \
	done
	$(PYTHON) -m experiments.phase_change $(RUNS)/pydocs-attn-only-2l --control $(RUNS)/pydocs-attn-only-1l

# the fast demo: synthetic-assisted (half of the training windows are repeated random tokens)
train-2l-mixed: install
	$(call train,attn-only-2l-mixed)
	$(PYTHON) -m experiments.phase_change $(RUNS)/attn-only-2l-mixed

# ---- the Model Analysis Table (experiments/README in the main README) --------------------------
# Jobs resume: an interrupted sweep started again skips what is done. SCHEDULER=tcp://HOST:8786
# sends the jobs to a Dask cluster whose workers share this folder. The screenshot needs Chromium.
# DEVICE=gpu trains and measures on CuPy (one GPU: add WORKERS=1). SEEDS=3 trains and measures
# seeds 0-2 of every model (cells: median [range]); ONLY="attn-only-1l attn-only-2l" just those.
DEVICE ?= cpu
SEEDS ?= 1
RECIPE ?= bytes
SELECT = --seeds $(SEEDS) --recipe $(RECIPE) $(if $(ONLY),--only $(ONLY))
SWEEP_FLAGS = --device $(DEVICE) $(SELECT) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) $(if $(WORKERS),--workers $(WORKERS))
define reproduce
	$(PYTHON) -m experiments.sweep $(1) $(SWEEP_FLAGS)
	$(PYTHON) -m experiments.report $(1) --device $(DEVICE) $(SELECT)
	-@$(PYTHON) -c "from experiments.screenshot import find_chromium as f; exit(f() is None)" && \
		$(PYTHON) -m experiments.screenshot $(2)/index.html || \
		echo "(no Chromium: skipped the screenshot check; apt-get install chromium)"
endef

reproduce: install
	$(call reproduce,,report$(if $(filter bpe,$(RECIPE)),-bpe))

reproduce-small: install
	$(call reproduce,--small,report-small)

# ---- classroom exercises (exercises/README.md) -------------------------------------------
# make exercise N=4 (or: make exercise 4) checks your exercises/ex04_*.py and says what is wrong.
# make solutions checks the reference solutions (EXERCISE_FAST=0 for the full training runs).
# make notebooks writes each exercise as a notebook with a check cell after every function:
# exercises/notebooks/exNN_*.ipynb for students, exercises/solutions/notebooks/ for teachers.
# make handout writes dist/handout.zip, what students get: the engine, the stubs, the checks,
# the hints and the students' notebooks; no solutions (pip install -e ".[lab]" once unzipped).
# CI needs no target of its own: tests/test_exercises.py, tests/test_exercise_notebooks.py and
# tests/test_handout.py, part of make test, run the same checks, every notebook and the zip.
.PHONY: exercise solutions notebooks handout natural-model
EXERCISE_FAST ?= 1
ifeq (exercise,$(firstword $(MAKECMDGOALS)))
N ?= $(word 2,$(MAKECMDGOALS))
$(if $(N),$(eval $(N):;@:))
endif
# the dev extras, installed only when missing (a full install takes ~10 s each time)
define exercise_deps
	@$(PYTHON) -c "import numpy, matplotlib, pytest, hypothesis" 2>/dev/null || $(MAKE) install
endef

define notebook_deps
	@$(PYTHON) -c "import numpy, matplotlib, pytest, hypothesis, nbformat, ipykernel" 2>/dev/null \
		|| $(MAKE) install
endef

exercise:
	$(exercise_deps)
	@test -n "$(N)" || { echo "usage: make exercise N=4   (checks exercises/ex04_*.py)"; exit 2; }
	@test="$$(ls exercises/test_$$(printf %02d $$(expr $(N) + 0))_*.py 2>/dev/null)"; \
	test -n "$$test" || { echo "no exercise $(N); the list is in exercises/README.md"; exit 2; }; \
	OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} $(PYTHON) -m pytest -q --tb=short \
		-p no:cacheprovider $$test

solutions:
	$(exercise_deps)
	EXERCISE_SOURCE=solutions EXERCISE_FAST=$(EXERCISE_FAST) OPENBLAS_NUM_THREADS=1 \
		$(PYTHON) -m pytest -q -p no:cacheprovider exercises
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/test_exercises.py -k "stub"

notebooks:
	$(notebook_deps)
	$(PYTHON) -m exercises.make_notebooks

handout:
	$(notebook_deps)
	$(PYTHON) -m exercises.make_handout

# make natural-model trains, once, the natural-text model that exercises 06 and 16 also show
# (exercises.common.natural_run): the attn-only-2l recipe of make train-2l stopped at 8M tokens,
# a snapshot every 0.5M, kept in exercises/_output/runs/natural-2l (~3-4 min on 2 cores);
# made already, it says where it is and which head is the induction head
natural-model:
	$(exercise_deps)
	$(PYTHON) -m exercises.common
