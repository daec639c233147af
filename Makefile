# Entry points a newcomer needs; everything runs inside .venv/ (made by scripts/setup.sh).
.PHONY: setup quick lenet test test-fast lint bench lock pull

PY := .venv/bin/python
# Snakemake's jobs call `ticketbench`, `snakemake` and `dvc` by name: put the venv first on their PATH.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
THREADS ?= 2

setup:
	scripts/setup.sh

# CPU-sized reproduction of all three experiment families on real Fashion-MNIST (see config/quick.yaml).
quick: setup
	.venv/bin/snakemake --configfile config/quick.yaml --cores $(THREADS)
	@echo "quick: report in results/quick/report.md, figures in results/quick/figures/"

# The LeNet experiments of the LTH and LMC papers at their exact protocols on real MNIST (config/lenet.yaml).
# MNIST comes from $$TICKETBENCH_DATA or ./data, downloaded once here where a network exists (verified only,
# when it is already there), never by the jobs.
lenet: setup
	.venv/bin/ticketbench download mnist
	.venv/bin/snakemake --configfile config/lenet.yaml --cores $(THREADS)
	@echo "lenet: report in results/lenet/report.md, figures in results/lenet/figures/"

# The reviewer's path on any clone (docs/results.md, section 2): fetch what the DVC remote has of the trained
# runs (none without a remote; --allow-missing: what it lacks is left out, not an error), redraw every figure
# and report from the committed tables, and say which configs' runs are here to audit or compare.
pull: setup
	@if .venv/bin/dvc remote default >/dev/null 2>&1; then .venv/bin/dvc pull --allow-missing; \
	else echo "pull: no DVC remote is configured, so no trained runs are fetched (docs/results.md, 'The DVC remote')"; fi
	.venv/bin/dvc repro
	@for tables in results/*/tables; do r=$${tables%/tables}; \
	  if [ -d $$r/runs ]; then echo "pull: $$r/runs is here: ticketbench audit $$r"; \
	  else echo "pull: $$r/runs is not here: retrain it to compare with the committed tables (docs/results.md, section 2)"; fi; done

# The test suite CI runs (unit, workflow, SLURM and container tests; the last two install what they need
# when run as root and skip with a reason otherwise).
test: setup
	$(PY) -m pytest

# Fast feedback while developing: skip the slow end-to-end tests.
test-fast: setup
	$(PY) -m pytest -m "not slow and not slurm and not container"

lint: setup
	.venv/bin/snakemake --lint --configfile config/smoke.yaml
	.venv/bin/snakefmt --check workflow
	.venv/bin/hadolint --failure-threshold warning containers/Dockerfile

bench: setup
	$(PY) bench/throughput.py
	$(PY) bench/hessian.py

# Re-resolve requirements.lock from pyproject.toml's exact pins (tests/test_lock.py checks they agree): one
# universal resolution for Python 3.11 and 3.12 whose environment markers select PyPI's CUDA wheels on Linux
# and the CPU/MPS wheels on macOS; versions already in the lock are kept unless a pin forces a change. The
# lock's pip line is carried over unchanged: nothing depends on pip, but every venv and the image hold it, and
# a container test compares the image's whole environment with the lock.
lock:
	grep '^pip==' requirements.lock | .venv/bin/uv pip compile --universal --python-version 3.11 \
	  --extra workflow --extra dev --no-annotate --custom-compile-command "make lock" pyproject.toml - -o requirements.lock

# The Apptainer image file the workflow's jobs run in with --sdm apptainer (containers/README.md): the image
# built from this checkout with podman (ENGINE=docker for docker), converted by apptainer. No ticketbench
# image from a registry is needed. IMAGE_ARGS passes build.sh options, e.g. --host-pip-sources.
.PHONY: image
image:
	containers/build.sh --sif containers/ticketbench.sif $(IMAGE_ARGS)
