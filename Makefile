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
	multimon-ng espeak-ng sox iproute2 systemd
PYTEST_ARGS ?=
QUICK ?=

.PHONY: all demo test setup apt lint bench clean campaign-powercut campaign-diskfull \
	campaign-network campaign-fuzz campaign-clock image system-test

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
	$(PY) -m pip install -q -e . pytest hypothesis ruff psycopg2-binary pytest-timeout
	touch $@

setup: apt $(STAMP)

demo: setup
	$(PY) -m recorder.demo --out demo-out

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

campaign-powercut campaign-diskfull campaign-network campaign-clock: setup
	$(PY) bench/campaigns/$(subst campaign-,,$@).py $(if $(QUICK),--quick)

# atheris (coverage-guided) is only needed here; without a wheel for this machine the
# campaign runs hypothesis alone and says so.
campaign-fuzz: setup
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q atheris || \
	  echo "atheris could not be installed: hypothesis only"
	$(PY) bench/campaigns/fuzz.py $(if $(QUICK),--quick)

# The box image from Debian packages alone (firmware/build-image.sh; needs root):
# arm64 for the Pi, or with QUICK=1 the same root for amd64 (the KVM test VM).
# Cached under build/image/ARCH: a rerun reuses the debootstrap and the wheel set.
IMAGE_ARCH := $(if $(QUICK),amd64,arm64)
IMAGE_PKGS := debootstrap fdisk e2fsprogs dosfstools mtools qemu-utils \
	$(if $(QUICK),qemu-system-x86,qemu-system-arm qemu-user-static binfmt-support)
image: setup
	@$(MAKE) --no-print-directory apt APT_PKGS="$(IMAGE_PKGS)"
	LINETAP_HOST_PIP="$(abspath $(PY)) -m pip" firmware/build-image.sh --arch $(IMAGE_ARCH)

# Boot the image under QEMU with systemd, gpio-sim and snd-aloop (tests/system/test_boot.py).
# QUICK=1: amd64 under KVM (minutes); otherwise arm64 -M virt under TCG (slow).
system-test: image
	LINETAP_SYSTEM_TEST=1 LINETAP_SYSTEM_ARCH=$(IMAGE_ARCH) $(PY) -m pytest -q -s \
	  -p no:cacheprovider --timeout=3600 tests/system/test_boot.py

clean:
	rm -rf demo-out build .pytest_cache
