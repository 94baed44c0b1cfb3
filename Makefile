# actuated.registry: one entry point for developers, CI and users.
#   make demo   - the main job end to end on the built-in local example (an actuated-like host, a VM, a fake Docker Hub)
#   make test   - every test: lint, sanity, unit, Molecule on amd64 and arm64 (installs and starts what it needs)
# Sub-targets: make deps | venv | world | lint | sanity | unit | molecule [SCENARIO=x] [ARCHES="amd64 arm64"] | bench
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(CURDIR)
VENV := $(ROOT)/.venv
BIN := $(VENV)/bin
PY := python3
export WORLD_CACHE ?= /var/cache/actuated-world
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.cache/collections
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0
export PATH := $(BIN):$(PATH)
# Which scenario runs on which architecture in `make test`. arm64 runs under qemu-user emulation, several times
# slower: it proves what depends on the architecture (install, service, sandbox, TLS, pulls, certificate renewal);
# the architecture-independent logic (bad input, upgrade paths) and the fault/load suite run on amd64 (resilience
# also passes on arm64: `make molecule SCENARIO=resilience ARCHES=arm64`, about 10 minutes).
MATRIX ?= default:amd64 default:arm64 cert_rotation:amd64 cert_rotation:arm64 variants:amd64 resilience:amd64
# The resilience scenario's summary (JSON per architecture) is also written here.
export RESILIENCE_SUMMARY_DIR ?= $(ROOT)/.cache/results
SCENARIO ?=
ARCHES ?= amd64 arm64
TIMED := $(PY) $(ROOT)/tests/tools/timed.py

.PHONY: test demo deps venv world world-down lint sanity unit build docs molecule bench bench-smoke clean stop

## Every test, in order, with the time each stage took; stops what it started even when a stage fails. (Building the
## test world while the static stages run was tried: both slowed down on 2 cores, and the run took as long.)
test:
	@trap '$(MAKE) --no-print-directory stop' EXIT; $(TIMED) --reset; \
	$(TIMED) deps -- $(MAKE) --no-print-directory deps venv && \
	$(TIMED) lint -- $(MAKE) --no-print-directory lint && \
	$(TIMED) sanity -- $(MAKE) --no-print-directory sanity && \
	$(TIMED) unit -- $(MAKE) --no-print-directory unit && \
	$(TIMED) build -- $(MAKE) --no-print-directory build && \
	$(TIMED) world -- $(MAKE) --no-print-directory world && \
	$(TIMED) molecule -- $(MAKE) --no-print-directory molecule && \
	$(TIMED) bench-smoke -- $(MAKE) --no-print-directory bench-smoke && \
	$(TIMED) --summary

deps:
	$(PY) world/world.py deps

$(BIN)/.stamp: requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(BIN)/.stamp
	@mkdir -p $(ROOT)/.cache/collections/ansible_collections/actuated
	@ln -sfn $(ROOT) $(ROOT)/.cache/collections/ansible_collections/actuated/registry

world: deps
	$(PY) world/world.py up

world-down:
	$(PY) world/world.py down

stop:
	-$(PY) world/world.py down
	-$(PY) world/world.py stop-deps

lint: venv
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --profile production --strict
	$(BIN)/python tests/tools/readme_vars.py --check

docs: venv
	$(BIN)/python tests/tools/readme_vars.py

sanity: venv
	$(PY) tests/sanity/run.py

unit: venv
	PYTHONPATH=$(ANSIBLE_COLLECTIONS_PATH) $(BIN)/python -m pytest -q tests/unit

## The Galaxy tarball: no dev-only files; installs; ansible-doc lists the module and renders the role.
build: venv
	$(BIN)/python tests/tools/check_build.py

## The matrix, or one scenario: make molecule SCENARIO=default [ARCHES=arm64]. On arm64 the default sequence skips
## check mode and idempotence (architecture-independent, slow under emulation): .config/molecule/config.yml.
molecule: venv world
	@# Targets left by an interrupted run would hold the bridge addresses (192.168.128.1/129.1): remove them first.
	@docker ps -aq --filter label=owner=molecule | xargs -r docker rm -f >/dev/null
	@eval "$$($(PY) world/world.py env)"; \
	runs="$(if $(SCENARIO),$(foreach a,$(ARCHES),$(SCENARIO):$(a)),$(MATRIX))"; \
	for run in $$runs; do s=$${run%%:*}; a=$${run##*:}; seq=; \
	  [ "$$a" = amd64 ] || seq="[destroy, create, prepare, converge, verify, destroy]"; \
	  $(TIMED) "molecule $$s $$a" -- env MOLECULE_ARCH=$$a MOLECULE_SEQUENCE="$$seq" $(BIN)/molecule test -s $$s || exit 1; \
	done

demo: deps venv world
	$(PY) demo/run.py

bench: deps venv world
	$(PY) bench/run.py

## The benchmark's quick mode (keeps it working; never fails on a figure): bench/results/smoke/, git-ignored.
bench-smoke: venv world
	$(PY) bench/run.py --smoke

clean: stop
	rm -rf $(VENV) .cache tests/output
