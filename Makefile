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
	nodejs chromium pgbouncer \
	rauc squashfs-tools dbus dosfstools mtools e2fsprogs
PYTEST_ARGS ?=
QUICK ?=
N ?= 10

.PHONY: all demo portal test test-fast lint-imports setup apt lint bench bench-fleet \
	bench-uplink bench-pgvolume clean campaign-powercut campaign-diskfull campaign-network \
	campaign-fuzz campaign-clock campaign-sweep image system-test bundle

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
	$(PY) -m pip install -q -e '.[portal,s3]' pytest hypothesis ruff psycopg2-binary \
	  pytest-timeout import-linter aiosmtpd playwright 'moto[server]>=5'
	touch $@

# The portal's browser libraries (HPKE), exactly as locked; served as ES modules.
NODE_MODULES := sync/upstream/portal/node_modules/.package-lock.json
# npm comes with some nodejs builds (NodeSource's) and is a Debian package of its own
# with others: install it only when the command is missing.
$(NODE_MODULES): sync/upstream/portal/package-lock.json
	@$(MAKE) --no-print-directory apt
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends npm; }
	npm ci --prefix sync/upstream/portal --no-audit --no-fund --loglevel=error

setup: apt $(STAMP) $(NODE_MODULES)

demo: setup
	$(PY) -m recorder.cli.demo --out demo-out

# Serve the portal on the demo's upstream (run `make demo` first).
portal: setup
	@[ -f demo-out/upstream/upstream.toml ] || { echo "run 'make demo' first"; exit 2; }
	$(PY) -m recorder.cli portal --config demo-out/upstream/upstream.toml --bind 127.0.0.1:8080

# lint-imports checks the one-way import rules in .importlinter before any test runs.
test: setup lint-imports
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 $(PYTEST_ARGS)

# Everything not marked slow (the campaign runs, the talk-off corpus, the long end-to-end
# runs): under 3 minutes on 2 cores. `make test` still runs everything.
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 -m "not slow" $(PYTEST_ARGS)

lint-imports: setup
	$(VENV)/bin/lint-imports

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench.sim_throughput
	$(PY) -m bench.pipeline
	$(PY) -m bench.evidence
	$(PY) -m bench.dsp
	$(PY) -m bench.sync
	$(PY) -m bench.portal

# The upstream at fleet scale (issue 19); run by hand, each takes minutes. bench-uplink
# needs root (network namespace, tc).
bench-fleet: setup
	$(PY) -m bench.fleet $(FLEET_ARGS)

bench-uplink: setup
	$(PY) -m bench.uplink

bench-pgvolume: setup
	$(PY) -m bench.pgvolume

campaign-powercut campaign-diskfull campaign-network campaign-clock: setup
	$(PY) -m bench.campaigns.$(subst campaign-,,$@) $(if $(QUICK),--quick)

# The QUICK power-cut and full-disk campaigns on N fresh random seeds; stops at the
# first violation and prints the command that reproduces it.
campaign-sweep: setup
	$(PY) -m bench.campaigns.sweep --n $(N)

# atheris (coverage-guided) is only needed here; without a wheel for this machine the
# campaign runs hypothesis alone and says so.
campaign-fuzz: setup
	@$(PY) -c 'import atheris' 2>/dev/null || $(PY) -m pip install -q atheris || \
	  echo "atheris could not be installed: hypothesis only"
	$(PY) -m bench.campaigns.fuzz $(if $(QUICK),--quick)

# The box image from Debian packages alone (firmware/build-image.sh; needs root):
# arm64 for the Pi, or with QUICK=1 the same root for amd64 (the KVM test VM).
# Cached under build/image/ARCH: a rerun reuses the debootstrap and the wheel set.
IMAGE_ARCH := $(if $(QUICK),amd64,arm64)
IMAGE_PKGS := debootstrap fdisk e2fsprogs dosfstools mtools qemu-utils libedit2 \
	$(if $(QUICK),qemu-system-x86,qemu-system-arm qemu-user-static binfmt-support)
image: setup
	@$(MAKE) --no-print-directory apt APT_PKGS="$(IMAGE_PKGS)"
	LINETAP_HOST_PIP="$(abspath $(PY)) -m pip" firmware/build-image.sh --arch $(IMAGE_ARCH)

# A signed RAUC bundle (verity format) from a root file system image, with a development
# CA and signing certificate made beside it on first use (docs/updates.md):
# build/bundle/linetap-VERSION.raucb and build/bundle/keys/. ROOTFS=IMG.ext4 (default: a
# small demo root), BOOT=IMG.vfat (optional), BUNDLE_VERSION (default: the package's).
BUNDLE_PKGS := rauc squashfs-tools openssl e2fsprogs
BUNDLE_VERSION ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
bundle:
	@$(MAKE) --no-print-directory apt APT_PKGS="$(BUNDLE_PKGS)"
	firmware/rauc/make-bundle.sh --out build/bundle/linetap-$(BUNDLE_VERSION).raucb \
	  --keys build/bundle/keys --version $(BUNDLE_VERSION) \
	  $(if $(ROOTFS),--rootfs $(ROOTFS)) $(if $(BOOT),--boot $(BOOT))

# Boot the image under QEMU with systemd, gpio-sim and snd-aloop (tests/system/test_boot.py).
# QUICK=1: amd64 (KVM where it boots Linux, else TCG; minutes); otherwise arm64 -M virt
# under TCG (slow).
# The system test's NTP server: Debian's chronyd, unpacked under build/ rather than
# installed (the chrony package would replace this machine's own time client); the test
# runs it on loopback in a network namespace of its own, never steering this clock.
CHRONYD := build/tools/chrony/usr/sbin/chronyd
$(CHRONYD):
	mkdir -p build/tools
	cd build/tools && rm -f chrony_*.deb && apt-get download chrony && \
	  dpkg-deb -x chrony_*.deb chrony
	@touch $@

system-test: image $(CHRONYD)
	LINETAP_CHRONYD=$(abspath $(CHRONYD)) LINETAP_SYSTEM_TEST=1 LINETAP_SYSTEM_ARCH=$(IMAGE_ARCH) $(PY) -m pytest -q -s \
	  -p no:cacheprovider --timeout=3600 tests/system/test_boot.py

clean:
	rm -rf demo-out build .pytest_cache
