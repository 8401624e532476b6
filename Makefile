# The user interface: configuration through kconfiglib, the test matrix, reports.
# `make help` lists the targets. The first `make` builds .venv from requirements.txt.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
KCONFIG := $(PY) scripts/kconfig.py
export srctree := $(CURDIR)

# User values reach the scripts literally through the environment, never
# through recipe text, so a path with spaces, quotes, `$` or backticks is a
# path and nothing in it runs: $(value) takes the text as typed (make does
# not expand it), `override` keeps it over the command line's, and the
# scripts read them from their environment (sample.py: RUN, PROMPT, ... too).
USER_VARS := RESULTS OUT A B EXECUTOR DEVICE RUN CKPT PROMPT NUM_SAMPLES MAX_NEW_TOKENS TEMPERATURE TOP_K SEED TRACKER
$(foreach v,$(USER_VARS),$(if $(filter undefined,$(origin $(v))),,$(eval override $(v) := $$(value $(v)))))
export $(USER_VARS)

.DEFAULT_GOAL := all
.PHONY: all help menuconfig olddefconfig savedefconfig listdefconfigs defconfig- test-matrix-dry-run gpu-check \
	continue report compare reproduce sample data test test-fast ci bench clean mrproper venv trackers

$(STAMP): requirements.txt
	@echo "Setting up $(VENV) (first run only; a few minutes)..."
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip 2>&1 | grep -v -i warning || true
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt 2>&1 | grep -v -i warning || true
	@$(PY) -c "import torch, kconfiglib, pynvml, psutil, pandas, matplotlib" || \
		{ echo "error: installing requirements.txt into $(VENV) failed; see the pip output above" >&2; exit 2; }
	@touch $@

venv: $(STAMP)

# The optional trackers (W&B, Trackio): installed once the loaded .config enables one.
TRACKER_STAMP := $(VENV)/.trackers-installed
TRACKERS_WANTED = $(shell grep -sqE '^CONFIG_ENABLE_(WANDB|TRACKIO)=y' .config && echo $(TRACKER_STAMP))

$(TRACKER_STAMP): requirements-trackers.txt $(STAMP)
	@echo "Installing the experiment trackers (requirements-trackers.txt: wandb, trackio)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-trackers.txt 2>&1 | grep -v -i warning || true
	@$(PY) -c "import wandb, trackio" 2>/dev/null || { echo "error: installing requirements-trackers.txt into \
	$(VENV) failed (see above); install it by hand with $(PY) -m pip install -r requirements-trackers.txt, \
	or switch the trackers off: make menuconfig (Experiment tracking)" >&2; exit 2; }
	@touch $@

trackers: $(TRACKER_STAMP)

all: $(STAMP) $(TRACKERS_WANTED)
	@$(PY) scripts/matrix.py run

help:
	@echo "Configuration:"
	@echo "  make menuconfig            edit .config in a menu (kconfiglib)"
	@echo "  make defconfig-NAME        load defconfigs/NAME into .config"
	@echo "    [TRACKER=wandb|trackio|wandb,trackio|none]  log every run to these experiment trackers"
	@echo "  make listdefconfigs        list the named configurations"
	@echo "  make olddefconfig          fill .config with defaults for unset symbols"
	@echo "  make savedefconfig         write a minimal 'defconfig' from .config"
	@echo "Running:"
	@echo "  make [EXECUTOR=local|slurm]  run the test matrix of .config (default: lenet5-quick)"
	@echo "  make test-matrix-dry-run [EXECUTOR=..]  list the runs of .config, the slot plan and the time estimate"
	@echo "  make continue [RESULTS=d] [EXECUTOR=local|slurm]  finish the newest (or given) result directory"
	@echo "  make data                  download/tokenize the datasets .config needs (make does it too)"
	@echo "  make report RESULTS=d [OUT=o]  regenerate the reports and graphs of a result directory (ours or upstream)"
	@echo "  make compare A=d B=d [OUT=o]  two result directories side by side: deltas, Welch p-values, runs of one side"
	@echo "  make reproduce RESULTS=d RUN=id [OUT=o]  rerun one run from its folder into a new directory, metrics side by side"
	@echo "  make sample RESULTS=d RUN=id [PROMPT=..] [NUM_SAMPLES=n] [MAX_NEW_TOKENS=n] [TEMPERATURE=t] [TOP_K=k]"
	@echo "                             text from a GPT-2 run's checkpoint (or CKPT=file, nanoGPT's ckpt.pt too)"
	@echo "Set-up (make does both when needed):"
	@echo "  make venv                  create .venv and install requirements.txt into it"
	@echo "  make trackers              install the experiment trackers (requirements-trackers.txt: wandb, trackio)"
	@echo "Development:"
	@echo "  make test                  run the test suite (everything; what CI runs)"
	@echo "  make test-fast             the unit and small integration tests only: no trainer runs, matrices"
	@echo "                             or make calls (those are marked slow); about 2.5 min on 2 cores"
	@echo "  make ci                    run every ci-* defconfig end to end"
	@echo "  make bench [DEVICE=cuda]   AdamWPrune step, mask update, threshold and memory vs torch baselines"
	@echo "  make gpu-check             GPU figures (NVML, bench on cuda, GPT-2 124M, ResNet-18) into JSON + docs"
	@echo "  make clean                 remove caches;  make mrproper: also .config, results, .venv"

# curses needs a terminal on both ends; without one it dies in a traceback (cbreak() returned ERR)
menuconfig: $(STAMP)
	@test -t 0 && test -t 1 || { echo "error: make menuconfig needs a terminal (stdin and stdout); without one, \
	load a configuration with make defconfig-NAME or edit .config, then make olddefconfig" >&2; exit 2; }
	@$(VENV)/bin/menuconfig Kconfig

defconfig-%: export DEFCONFIG_NAME = $*
defconfig-%: $(STAMP)
	@$(KCONFIG) defconfig

# With no name `defconfig-%` does not match, and make's built-in `%: %.o` rule would reach it
# through defconfig-.o, so the error would name ".o"; the script asks for a name instead.
defconfig-: export DEFCONFIG_NAME =
defconfig-: $(STAMP)
	@$(KCONFIG) defconfig

olddefconfig: $(STAMP)
	@$(KCONFIG) olddefconfig

savedefconfig: $(STAMP)
	@$(KCONFIG) savedefconfig

listdefconfigs: $(STAMP)
	@$(KCONFIG) listdefconfigs

test-matrix-dry-run: $(STAMP)
	@$(PY) scripts/matrix.py dry-run

continue: $(STAMP) $(TRACKERS_WANTED)
	@$(PY) scripts/matrix.py continue

data: $(STAMP)
	@test -f .config || { echo "error: no .config; pick one with make defconfig-NAME or make menuconfig" >&2; exit 2; }
	@$(PY) scripts/prepare_data.py --config .config

report: $(STAMP)
	@$(PY) scripts/report.py

compare: $(STAMP)
	@$(PY) scripts/compare.py

reproduce: $(STAMP)
	@$(PY) scripts/reproduce.py

sample: $(STAMP)
	@$(PY) scripts/sample.py

test: $(STAMP) $(TRACKER_STAMP)
	@$(PY) -m pytest -q

# The tests not marked slow (pytest.ini): no end-to-end trainer runs, matrices or make invocations.
test-fast: $(STAMP)
	@$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	@$(PY) benchmarks/bench_pruning.py

gpu-check: $(STAMP)
	@$(PY) scripts/gpu_check.py

ci: $(STAMP)
	@$(PY) scripts/ci.py

clean:
	rm -rf .pytest_cache
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +

mrproper: clean
	rm -rf .config .config.old test_matrix_results $(VENV)
