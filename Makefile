# actuated.registry: one entry point for developers, CI and users.
#   make demo   - the main job end to end on the built-in local example (an actuated-like host, a VM, a fake Docker Hub)
#   make test   - every test: lint, sanity, unit, Molecule on amd64 and arm64 (installs and starts what it needs)
# Sub-targets: make deps | venv | world | lint | sanity | unit | molecule [SCENARIO=x] [ARCHES="amd64 arm64"] | bench
#   | dashboard
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ROOT := $(CURDIR)
PY := python3
# The toolchain venv. `make core-X.Y` re-enters make with VENV/REQUIREMENTS/VENV_PY of another ansible-core (CORES).
VENV ?= $(ROOT)/.venv
REQUIREMENTS ?= requirements-dev.txt
VENV_PY ?= $(PY)
BIN := $(VENV)/bin
# ansible-core minors the collection is tested with (those still getting fixes), each as MINOR:PYTHON. The first is
# the main toolchain (.venv, requirements-dev.txt, the system python3); each other one gets .venv-core-MINOR from
# tests/requirements/core-MINOR.txt. `make test` runs sanity and unit tests with every one, and the default scenario
# on amd64 with the newest as the controller. Python 3.12/3.13 are found on PATH or in pyenv's versions.
CORES := 2.19:python3 2.20:python3.12 2.21:python3.13
NEWEST_CORE := $(lastword $(foreach c,$(CORES),$(firstword $(subst :, ,$(c)))))
find_python = $(shell for p in $$(command -v $(1)) $(wildcard $(HOME)/.pyenv/versions/*/bin/$(1)); do "$$p" -c '' 2>/dev/null && echo "$$p" && break; done)
core_python = $(call find_python,$(lastword $(subst :, ,$(filter $(1):%,$(CORES)))))
core_vars = VENV=$(ROOT)/.venv-core-$(1) REQUIREMENTS=tests/requirements/core-$(1).txt VENV_PY=$(call core_python,$(1))
export WORLD_CACHE ?= /var/cache/actuated-world
export ANSIBLE_COLLECTIONS_PATH := $(ROOT)/.cache/collections
# Everything Ansible, ansible-lint and Molecule would write under ~/.ansible and ~/.cache stays in the repository.
export ANSIBLE_HOME := $(ROOT)/.cache/ansible-home
# Molecule's create and destroy playbooks run async tasks on the controller; their job files would go to ~/.ansible_async.
export ANSIBLE_ASYNC_DIR := $(ROOT)/.cache/ansible-home/async
# Molecule runs with this HOME: its docker driver points async_dir at $HOME/.ansible_async whatever ANSIBLE_ASYNC_DIR
# says, and it keeps its ephemeral directories in $HOME/.cache/molecule.
MOLECULE_HOME := $(ROOT)/.cache/molecule-home
export MPLCONFIGDIR := $(ROOT)/.cache/matplotlib
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0
export PATH := $(BIN):$(PATH)
# Which scenario runs on which architecture in `make test`. arm64 runs under qemu-user emulation, several times
# slower: it proves what depends on the architecture (install, service, sandbox, TLS, pulls, certificate renewal);
# the architecture-independent logic (bad input, upgrade paths) and the fault/load suite run on amd64 (resilience
# also passes on arm64: `make molecule SCENARIO=resilience ARCHES=arm64`, about 10 minutes).
# fleet brings its own five hosts (two tiers, three edges, one of them arm64: molecule/fleet/molecule.yml), whatever
# the architecture named here.
# .github/workflows/ci.yml runs the same list (tests/unit/test_repo_consistency.py fails when the two differ).
MATRIX ?= default:amd64 default:arm64 variants:amd64 resilience:amd64 fleet:amd64
# Scenarios whose target takes the cloud-hypervisor bridge address 192.168.129.1 (the others: 192.168.128.1). All share
# one platform (.config/molecule/config.yml); `make molecule` passes the bridge to it as MOLECULE_BRIDGE.
BRIDGE_129 := variants resilience
# The run of MATRIX whose controller is the newest ansible-core of CORES (every other run uses the main toolchain):
# the default scenario on amd64, so that both the oldest and the newest supported ansible-core drive Molecule.
NEWEST_CORE_RUN := default:amd64
# The resilience scenario's summary (JSON per architecture) is also written here.
export RESILIENCE_SUMMARY_DIR ?= $(ROOT)/.cache/results
SCENARIO ?=
ARCHES ?= amd64 arm64
TIMED := $(PY) $(ROOT)/tests/tools/timed.py

.PHONY: molecule-newest-core test static venvs demo deps venv world world-down lint typecheck rules sanity unit build docs dashboard molecule bench bench-smoke clean stop

## Every test, with the time each stage took; stops what it started even when a stage fails. The static stages (lint,
## sanity and unit tests with every ansible-core, the Galaxy build) need no test world: they run beside the world and
## Molecule (mostly waiting on containers, systemd and the network), their output kept in .cache/static.log and shown
## at the end; the venvs they and Molecule share are made first. (Building a cold world beside them gains nothing on
## 2 cores: both are CPU-bound.)
test:
	@trap '$(MAKE) --no-print-directory stop' EXIT; $(TIMED) --reset; \
	$(TIMED) deps -- $(MAKE) --no-print-directory deps venvs || exit 1; \
	( $(MAKE) --no-print-directory static > $(ROOT)/.cache/static.log 2>&1 ) & static=$$!; \
	rc=0; { $(TIMED) world -- $(MAKE) --no-print-directory world && \
	  $(TIMED) molecule -- $(MAKE) --no-print-directory molecule && \
	  $(TIMED) demo -- $(MAKE) --no-print-directory demo DEMO_DOWN=1 && \
	  $(TIMED) bench-smoke -- $(MAKE) --no-print-directory bench-smoke; } || rc=$$?; \
	static_rc=0; wait $$static || static_rc=$$?; \
	echo "== the static stages (beside the world and Molecule; exit $$static_rc): .cache/static.log =="; \
	cat $(ROOT)/.cache/static.log; $(TIMED) --summary; [ $$rc -eq 0 ] && [ $$static_rc -eq 0 ]

## What needs no test world, in order: `make test` runs it beside the world and Molecule.
static: venvs
	$(TIMED) lint -- $(MAKE) --no-print-directory lint && \
	$(TIMED) sanity -- $(MAKE) --no-print-directory sanity && \
	$(TIMED) unit -- $(MAKE) --no-print-directory unit && \
	for c in $(wordlist 2,99,$(CORES)); do m=$${c%%:*}; \
	  $(TIMED) "sanity+unit ansible-core $$m" -- $(MAKE) --no-print-directory core-$$m || exit 1; done && \
	$(TIMED) build -- $(MAKE) --no-print-directory build

## The main venv and each other ansible-core's (CORES).
venvs: venv
	$(foreach c,$(wordlist 2,99,$(CORES)),$(MAKE) --no-print-directory venv $(call core_vars,$(firstword $(subst :, ,$(c)))) && ) true

## The test world runs as a module from the repository root (`python3 -m world`, world/README.md); so do the demo and
## the benchmark. Any other Python of the project venv finds them through the .pth file `make venv` writes.
deps:
	$(PY) -m world deps

$(BIN)/.stamp: $(REQUIREMENTS)
	@test -x "$(VENV_PY)" || command -v "$(VENV_PY)" >/dev/null || { echo "no Python interpreter '$(VENV_PY)' for $(VENV): install it (pyenv, or your distribution's package)" >&2; exit 1; }
	$(VENV_PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r $(REQUIREMENTS)
	touch $@

venv: $(BIN)/.stamp
	@mkdir -p $(ROOT)/.cache/collections/ansible_collections/actuated
	@ln -sfn $(ROOT) $(ROOT)/.cache/collections/ansible_collections/actuated/registry
	@# The repository root on the venv's sys.path: `import world` from any directory (Molecule's testinfra verifier).
	@echo "$(ROOT)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/actuated_registry_repo.pth"

world: deps
	$(PY) -m world up

world-down:
	$(PY) -m world down

stop:
	-$(PY) -m world down
	-$(PY) -m world stop-deps

lint: venv
	$(BIN)/yamllint --strict .
	XDG_CACHE_HOME=$(ROOT)/.cache/xdg $(BIN)/ansible-lint --profile production --strict --offline
	$(BIN)/python tests/tools/readme_vars.py --check
	$(MAKE) --no-print-directory typecheck rules

## The programs the role installs on hosts (standard library only, Python 3.8+ syntax) and their tests: ruff, then
## mypy --strict.
HOST_PROGRAMS := roles/registry_mirror/files/*.py tests/unit/files clients/*.py tests/unit/clients
## The test world, the benchmark and the world's tests (Python 3.11, standard library): the same rules, less PLR0913,
## which counts keyword-only options too (world's run() and target_up() take several by name; PLR0917 still limits
## the positional ones). mypy --strict over the world but its hub, which runs in its container.
WORLD_PYTHON := world bench tests/unit/world
typecheck: venv
	$(BIN)/ruff check --no-cache --target-version py38 --line-length 120 \
	  --select E,F,W,B,UP,RUF,PL,C4,SIM,I --ignore PLR2004 $(HOST_PROGRAMS)
	$(BIN)/mypy --strict --cache-dir $(ROOT)/.cache/mypy $(HOST_PROGRAMS)
	$(BIN)/ruff check --no-cache --target-version py311 --line-length 120 \
	  --select E,F,W,B,UP,RUF,PL,C4,SIM,I --ignore PLR2004,PLR0913 $(WORLD_PYTHON)
	$(BIN)/mypy --strict --cache-dir $(ROOT)/.cache/mypy --explicit-package-bases --exclude '^world/hub/' world bench

## The alert rules operators load (extras/prometheus/): `promtool check rules`, then `promtool test rules` (each alert
## fires on the series it is about, with its annotations). promtool is Debian's, from PATH or the one `make deps`
## extracts from the prometheus package without installing it (its postinst would start a Prometheus server); without
## either, a warning. tests/unit/test_alerts_dashboard.py checks that rules and dashboard name exported metrics only.
PROMTOOL = $(firstword $(shell command -v promtool) $(wildcard $(WORLD_CACHE)/tools/promtool))
rules:
	@if [ -z "$(PROMTOOL)" ]; then echo "WARNING: no promtool (make deps, or python3 -m world promtool): the alert rules are not checked" >&2; else \
	  set -x; $(PROMTOOL) check rules extras/prometheus/registry-mirror.rules.yml && \
	  $(PROMTOOL) test rules tests/prometheus/registry-mirror.rules.test.yml; fi

docs: venv
	$(BIN)/python tests/tools/readme_vars.py

## The README's picture of the dashboard (docs/dashboard/dashboard.png and .json, which say where it comes from),
## drawn from the committed capture of a test-world run (world/metrics_capture.py made it) without Grafana: promtool
## backfills the capture, Debian's Prometheus serves it on a loopback port while each panel's own queries are asked,
## matplotlib draws the panels where the dashboard puts them. Both tools come out of Debian's prometheus package as
## promtool does (`python3 -m world promtool`, run here when they are missing). DASHBOARD_OPTS: e.g. --min-interval 60.
DASHBOARD_CAPTURE ?= docs/dashboard/capture.om.gz
DASHBOARD_OPTS ?=
PROMETHEUS = $(firstword $(shell command -v prometheus) $(wildcard $(WORLD_CACHE)/tools/prometheus))
dashboard: venv
	@[ -n "$(PROMETHEUS)" ] && [ -n "$(PROMTOOL)" ] || $(PY) -m world promtool
	$(BIN)/python -m world.dashboard --capture $(DASHBOARD_CAPTURE) --out docs/dashboard/dashboard.png $(DASHBOARD_OPTS)

## ansible-test keeps its cache and per-test venvs under HOME: give it one in the test world's cache.
sanity: venv
	mkdir -p $(WORLD_CACHE)/ansible-test-home
	HOME=$(WORLD_CACHE)/ansible-test-home $(BIN)/python tests/sanity/run.py

## The unit tests mostly wait on the programs they start (supervisors, fake registries, ansible-playbook): pytest-xdist
## runs UNIT_JOBS test files at a time (a file's tests stay together: some share a module's server or a fixed port).
## Every venv has it (requirements-dev.txt, tests/requirements/core-*.txt); one without it runs them one after another,
## as UNIT_JOBS=0 does.
UNIT_PATHS ?= tests/unit
UNIT_JOBS ?= 4
unit: venv
	PYTHONPATH=$(ANSIBLE_COLLECTIONS_PATH) $(BIN)/python -m pytest -q \
	  $$($(BIN)/python -c 'import xdist' 2>/dev/null && echo "--numprocesses=$(UNIT_JOBS) --dist=loadfile") $(UNIT_PATHS)

## Sanity and unit tests with another ansible-core of CORES: make core-2.21. Only the unit tests that import Ansible
## (tests/unit/plugins): the host programs, the client script, the rollback scripts and the world do not use
## ansible-core, and `make unit` tests them once (about 2 minutes per extra run saved).
core-%:
	@[ -n "$(filter $*:%,$(CORES))" ] || { echo "ansible-core $* is not in CORES ($(CORES))" >&2; exit 1; }
	$(MAKE) --no-print-directory sanity unit UNIT_PATHS=tests/unit/plugins $(call core_vars,$*)

## The default scenario on amd64 with the newest ansible-core as the controller (in `make molecule`: NEWEST_CORE_RUN).
molecule-newest-core:
	$(MAKE) --no-print-directory molecule SCENARIO=default ARCHES=amd64 $(call core_vars,$(NEWEST_CORE))

## The Galaxy tarball: no dev-only files; installs; ansible-doc lists the module and renders the role.
build: venv
	$(BIN)/python tests/tools/check_build.py

## The matrix, or one scenario: make molecule SCENARIO=default [ARCHES=arm64]. On arm64 the default sequence skips
## check mode and idempotence (architecture-independent, slow under emulation): .config/molecule/config.yml.
molecule: venv world
	@# Targets left by an interrupted run, or the host `make demo` leaves for exploring, would hold the bridge addresses
	@# (192.168.128.1/129.1): remove them first.
	@docker ps -aq --filter label=owner=molecule | xargs -r docker rm -f >/dev/null
	@docker ps -aq --filter label=org.actuated.world.target | xargs -r docker rm -f >/dev/null
	@mkdir -p $(MOLECULE_HOME)
	@eval "$$($(PY) -m world env)"; \
	runs="$(if $(SCENARIO),$(foreach a,$(ARCHES),$(SCENARIO):$(a)),$(MATRIX))"; \
	for run in $$runs; do s=$${run%%:*}; a=$${run##*:}; seq=; bridge=128; \
	  [ "$$a" = amd64 ] || seq="[destroy, create, prepare, converge, verify, destroy]"; \
	  case " $(BRIDGE_129) " in *" $$s "*) bridge=129;; esac; \
	  if [ -z "$(SCENARIO)" ] && [ "$$run" = "$(NEWEST_CORE_RUN)" ]; then \
	    $(TIMED) "molecule $$s $$a (ansible-core $(NEWEST_CORE))" -- \
	      $(MAKE) --no-print-directory molecule SCENARIO=$$s ARCHES=$$a $(call core_vars,$(NEWEST_CORE)) || exit 1; continue; fi; \
	  $(TIMED) "molecule $$s $$a" -- env HOME=$(MOLECULE_HOME) MOLECULE_ARCH=$$a MOLECULE_BRIDGE=$$bridge MOLECULE_SEQUENCE="$$seq" \
	    $(BIN)/molecule test -s $$s || exit 1; \
	done

## DEMO_DOWN=1 (make test) removes the demo's host afterwards; by default it stays up for exploring.
demo: deps venv world
	@docker ps -aq --filter label=owner=molecule | xargs -r docker rm -f >/dev/null
	$(PY) -m demo.run

bench: deps venv world
	$(PY) -m bench.run

## The benchmark's quick mode (keeps it working; never fails on a figure): bench/results/smoke/, git-ignored.
bench-smoke: venv world
	$(PY) -m bench.run --smoke

clean: stop
	rm -rf $(VENV) .venv-core-* .cache tests/output
