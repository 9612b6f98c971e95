# Each target sets up .venv on first use, so a fresh clone needs nothing installed by hand.
# The venv is built from the lock of the running Python (requirements/lock-py3.X.txt: exact
# versions and sha256 hashes of every package, docs/environment.md); `make lock` regenerates it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK := requirements/lock-py$(PYVER).txt
# The Pythons `make lock` writes a lock for (requires-python >= 3.10).
LOCK_PYTHONS := 3.10 3.11 3.12 3.13 3.14
LOCK_PLATFORM := x86_64-manylinux_2_28
UV_VERSION := 0.13.9
LOCK_TOOLS := .venv-lock
# `make lock LOCK_FLAGS=--upgrade` moves every package to its newest allowed release; without it
# uv keeps the pins already in the lock files wherever pyproject.toml still allows them.
LOCK_FLAGS ?=

# Free disk a new .venv needs, in GB: the lock's torch is the CUDA build, about 6.3 GB installed
# with its libraries. Checked before pip starts, so a full disk is one line, not a broken venv.
VENV_DISK_GB ?= 7
define CHECK_DISK_PY
import math, os, shutil, sys, tempfile
try:
    need = float(sys.argv[1])
except (IndexError, ValueError):
    need = math.nan
if not need >= 0:
    sys.exit(f"error: VENV_DISK_GB={' '.join(sys.argv[1:])!r}: need a number of GB, 0 or more")
places = {}
for place in (os.getcwd(), tempfile.gettempdir()):
    places.setdefault(os.stat(place).st_dev, place)
free = {place: shutil.disk_usage(place).free / 2**30 for place in places.values()}
low = [f"{place} has {gb:.1f} GB free" for place, gb in free.items() if gb < need]
if low:
    sys.exit(
        f"error: a new .venv needs about {need:g} GB of free disk and " + "; ".join(low)
        + ": free some space (or set VENV_DISK_GB)"
    )
endef
export CHECK_DISK_PY
CHECK_DISK = $(PYTHON) -c "$$CHECK_DISK_PY" $(VENV_DISK_GB)

$(STAMP): pyproject.toml $(LOCK) requirements/pip.txt
	@$(CHECK_DISK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/pip.txt
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# No lock for this Python: say so in one line rather than resolve something unlocked.
requirements/lock-py%.txt:
	@echo "error: no lock for Python $* ($(LOCK) missing; locked: $(LOCK_PYTHONS)): use one of those Pythons (make PYTHON=python3.11 ...) or add $* to LOCK_PYTHONS and run make lock" >&2; exit 1

# Regenerate the locks with uv (pinned), from pyproject.toml's ranges and requirements/constraints.txt.
# Updating a lock may move numbers: regenerate the committed tables in the same change.
.PHONY: lock
lock:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)
	for v in $(LOCK_PYTHONS); do \
		$(LOCK_TOOLS)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
			--python-version $$v --python-platform $(LOCK_PLATFORM) \
			--constraint requirements/constraints.txt --custom-compile-command "make lock" \
			--quiet $(LOCK_FLAGS) -o requirements/lock-py$$v.txt || exit 1; \
	done
	$(LOCK_TOOLS)/bin/uv pip compile requirements/pip.in --generate-hashes \
		--python-platform $(LOCK_PLATFORM) --custom-compile-command "make lock" \
		--quiet $(LOCK_FLAGS) -o requirements/pip.txt

.PHONY: check-disk install test sweep ablate lint verify-results verify-gpu-results verify-elpv-results elpv-sweep controls
install: $(STAMP)

# The free-disk check that a new .venv runs first, on its own.
check-disk:
	@$(CHECK_DISK)

test: $(STAMP)
	$(PY) -m pytest -q

# Your own run of the default sweep's preset: into the git-ignored runs/ (runs/sweep.md,
# runs/sweep/), never the committed results/. At the end it says how its rows compare with the
# committed reference of the same command (results/sweep on the CPU in fp32, results/gpu/sweep on
# CUDA in fp32).
sweep: $(STAMP)
	$(PY) -m semclip_bench sweep --config configs/sweep.yaml --out runs --wandb auto

# Real solar-cell images (elpv-dataset, CC BY-NC-SA 4.0, a 90 MB optional extra), K = 0 to 20.
elpv-sweep: $(STAMP)
	$(PY) -m pip install -q -e ".[elpv]"
	$(PY) -m semclip_bench sweep --config configs/elpv/sweep.yaml

# Backbone controls: the same sweeps with the default architecture randomly initialised
# (--pretrained none, seeded); their tables say CONTROL in the title.
controls: $(STAMP)
	$(PY) -m pip install -q -e ".[elpv]"
	$(PY) -m semclip_bench sweep --config configs/control.yaml
	$(PY) -m semclip_bench sweep --config configs/elpv/control.yaml

ablate: $(STAMP)
	$(PY) -m semclip_bench ablate --config configs/ablation.yaml

# The committed tables, each from its preset in configs/ and a clean cache at the commit it names,
# under the lock (the exact command, naming the preset, is in each table's provenance). `make
# results` on a 2-core CPU; `make gpu-results` on one GPU (the committed ones: 1 x H100, fp32).
.PHONY: results gpu-results
results: $(STAMP)
	SEMCLIP_BENCH_CACHE=$$(mktemp -d) $(PY) -m semclip_bench sweep --config configs/sweep.yaml

gpu-results: $(STAMP)
	export SEMCLIP_BENCH_CACHE=$$(mktemp -d); \
	$(PY) -m semclip_bench sweep --config configs/gpu/sweep.yaml && \
	$(PY) -m semclip_bench ablate --config configs/gpu/ablation.yaml && \
	$(PY) -m semclip_bench sweep --config configs/gpu/control.yaml

# Rerun a few committed episodes of results/sweep from a clean cache on the CPU in fp32 and compare
# their rows bit for bit (exit 1 on any difference).
verify-results: $(STAMP)
	$(PY) -m semclip_bench verify --from results/sweep

# The same check for the committed GPU rows, on this machine's GPU; on another model, a
# difference is reported with both GPU names as its likely cause.
verify-gpu-results: $(STAMP)
	$(PY) -m semclip_bench verify --from results/gpu/sweep
	$(PY) -m semclip_bench verify --from results/gpu/ablation
	$(PY) -m semclip_bench verify --from results/gpu/control/sweep

# The same check for the committed real-image tables (needs the elpv extra; CPU, fp32).
verify-elpv-results: $(STAMP)
	$(PY) -m pip install -q -e ".[elpv]"
	$(PY) -m semclip_bench verify --from results/elpv/sweep
	$(PY) -m semclip_bench verify --from results/elpv/control/sweep

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# Validation-only tuning studies (docs/tuning.md), presets in configs/tuning/studies/ with their
# candidate variants in configs/tuning/methods/: each writes results/tuning/<study>/sweep.md.
STUDIES := winclip patchcore semclip lr budget budget2_semclip budget2_semclip_plus budget2_anomalyclip budget3_floor
.PHONY: tune
tune: $(STAMP)
	for s in $(STUDIES); do $(PY) -m semclip_bench sweep --config configs/tuning/studies/$$s.yaml || exit 1; done
	$(PY) -m benchmarks.convergence --method semclip --seeds 0,1 --out results/tuning/convergence_semclip.md
	$(PY) -m benchmarks.convergence --method anomalyclip --seeds 0,1 --out results/tuning/convergence_anomalyclip.md
