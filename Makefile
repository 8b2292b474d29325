# Linetap: `make demo` and `make test` set up a fresh Debian 12 machine on their own.
# Debian packages are installed only if missing; the venv is rebuilt only when
# pyproject.toml changes.

SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.linetap-installed
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PKGS := python3 python3-venv python3-dev gcc libasound2-dev alsa-utils libsndfile1 \
	mosquitto mosquitto-clients openssl postgresql device-tree-compiler shellcheck \
	multimon-ng espeak-ng sox iproute2 systemd \
	nodejs chromium
PYTEST_ARGS ?=
QUICK ?=

.PHONY: all demo portal test setup apt lint bench clean campaign-powercut campaign-diskfull \
	campaign-network campaign-fuzz campaign-clock

all: test

apt:
	@missing=$$(for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory apt
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[portal]' pytest hypothesis ruff psycopg2-binary pytest-timeout \
	  playwright
	touch $@

# The portal's browser libraries (HPKE), exactly as locked; served as ES modules.
NODE_MODULES := sync/portal/node_modules/.package-lock.json
# npm comes with some nodejs builds (NodeSource's) and is a Debian package of its own
# with others: install it only when the command is missing.
$(NODE_MODULES): sync/portal/package-lock.json
	@$(MAKE) --no-print-directory apt
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; }
	npm ci --prefix sync/portal --no-audit --no-fund --loglevel=error

setup: apt $(STAMP) $(NODE_MODULES)

demo: setup
	$(PY) -m recorder.demo --out demo-out

# Serve the portal on the demo's upstream (run `make demo` first).
portal: setup
	@[ -f demo-out/upstream/upstream.toml ] || { echo "run 'make demo' first"; exit 2; }
	$(PY) -m recorder.cli portal --config demo-out/upstream/upstream.toml --bind 127.0.0.1:8080

test: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/sim_throughput.py
	$(PY) bench/pipeline.py
	$(PY) bench/evidence.py
	$(PY) bench/dsp.py
	[ ! -f bench/sync.py ] || $(PY) bench/sync.py
	$(PY) bench/portal.py

campaign-powercut campaign-diskfull campaign-network campaign-clock: setup
	$(PY) bench/campaigns/$(subst campaign-,,$@).py $(if $(QUICK),--quick)

# atheris (coverage-guided) is only needed here; without a wheel for this machine the
# campaign runs hypothesis alone and says so.
campaign-fuzz: setup
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q atheris || \
	  echo "atheris could not be installed: hypothesis only"
	$(PY) bench/campaigns/fuzz.py $(if $(QUICK),--quick)

clean:
	rm -rf demo-out build .pytest_cache
