# The README's two commands are `make demo` and `make test`; both set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help venv images images-all protos lint typecheck unit test demo bench bench-quick clean-containers

help:
	@echo "make demo    run the orchestrator and a real job in a real container, to completion"
	@echo "make test    lint, type-check and run every test (needs a Docker engine)"
	@echo "make images  build the job images offline (worker, claude)"
	@echo "make bench   run the whole benchmark suite (~10 min; make bench-quick: ~4 min)"

DISTS := contract client orchestrator worker bridge
PACKAGES := -p ironclaw_contract -p ironclaw_client -p orchestrator -p worker -p bridge

$(STAMP): requirements-dev.txt $(foreach d,$(DISTS),$(d)/pyproject.toml)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

images: $(STAMP)
	deploy/scripts/build-images.sh worker claude

images-all: $(STAMP)
	deploy/scripts/build-images.sh worker claude orchestrator test

protos: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" PYTHON=$(PY) scripts/gen_protos.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(PACKAGES)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit -q

# Every image the tests run, built before pytest: a cold machine's first build takes minutes and
# must not count against one test's timeout. The tests' fixtures then find them up to date.
test-images: $(STAMP)
	deploy/scripts/build-images.sh worker claude orchestrator test mini-swe-agent aider-chat

test: $(STAMP) lint typecheck test-images
	$(VENV)/bin/pytest -q -ra

demo: $(STAMP)
	PYTHON=$(PY) deploy/scripts/demo.sh

# Every benchmark, one table each plus a summary of the targets; JSON in bench/results/.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

bench-quick: $(STAMP)
	$(PY) -m bench --quick $(BENCH_ARGS)

clean-containers:
	docker ps -aq --filter label=ironclaw.job_id | xargs -r docker rm -f
