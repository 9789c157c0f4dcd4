# The commands of the README: `make demo`, `make test` (everything; what CI runs) and `make test-fast`
# (no tritonserver, Prometheus, promtool, Alertmanager, podman or GPU: the tests tests/conftest.py does
# not mark triton, prometheus, container or gpu). Each bootstraps .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrapped

.PHONY: demo test test-fast bench clean gpu-bundle gpu-check-dry

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) sh scripts/bootstrap.sh
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gpupack demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not triton and not prometheus and not container and not gpu"

bench: $(STAMP)
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

# The GPU check (scripts/gpu-check.sh): its wheel folder for the device machine, and its non-GPU
# parts run here, with the NVML steps skipped.
gpu-bundle: $(STAMP)
	PYTHON=$(BIN)/python sh scripts/gpu-bundle.sh

gpu-check-dry: gpu-bundle
	PYTHON=$(BIN)/python bash scripts/gpu-check.sh --dry

clean:
	rm -rf $(VENV) .pytest_cache

# The images (gpupack, a CPU-only Triton, Prometheus+Alertmanager) and the CPU-only stack, up and
# detached, with podman; `sh deploy/podman/stack.sh down` takes it down. See deploy/README.md.
.PHONY: containers
containers: $(STAMP)
	sh deploy/podman/stack.sh build up
