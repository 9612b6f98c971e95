# Each target sets up .venv on first use, so a fresh clone needs nothing installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

.PHONY: install test sweep ablate lint verify-results verify-gpu-results
install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sweep: $(STAMP)
	$(PY) -m semclip_bench sweep --shots 0,1,5,10,20

ablate: $(STAMP)
	$(PY) -m semclip_bench ablate

# Rerun a few committed episodes of results/sweep from a clean cache on the CPU in fp32 and compare
# their rows bit for bit (exit 1 on any difference).
verify-results: $(STAMP)
	$(PY) -m semclip_bench verify --from results/sweep

# The same check for the committed GPU rows, on a GPU of the model that wrote them (an H200).
verify-gpu-results: $(STAMP)
	$(PY) -m semclip_bench verify --from results/gpu/sweep
	$(PY) -m semclip_bench verify --from results/gpu/ablation

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

# Validation-only tuning studies (docs/tuning.md): each writes results/tuning/<study>/sweep.md.
STUDIES := winclip patchcore semclip lr budget budget2_semclip budget2_semclip_plus budget2_anomalyclip
.PHONY: tune
tune: $(STAMP)
	for s in $(STUDIES); do $(PY) -m semclip_bench sweep --config benchmarks/tuning/studies/$$s.yaml || exit 1; done
	$(PY) -m benchmarks.convergence --method semclip --seeds 0,1 --out results/tuning/convergence_semclip.md
	$(PY) -m benchmarks.convergence --method anomalyclip --seeds 0,1 --out results/tuning/convergence_anomalyclip.md
